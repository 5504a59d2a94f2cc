"""Backends 'pallas_tpu_flash' and 'pallas_tpu_splash': the Pallas TPU attention kernels.

The kernels need sequence blocks that are multiples of 128, so ``T`` is padded up to a multiple
of 128 (`padding`). Padded tokens get their own segment id (or, without segment ids, sit after
every real token, where the causal mask hides them), so they never change a real token's
output; their rows are sliced off. Off TPU the kernels run interpreted (slow; for tests;
`interpret`). On a multi-device mesh they run under ``shard_map`` (`..mesh`). The head dimension
is not padded: on a real TPU, D = 64 or 128 suits the kernels best.
"""
