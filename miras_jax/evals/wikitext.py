"""WikiText-2 as lm-evaluation-harness scores it: pages split at top-level headings
(EleutherAI/wikitext_document_level) and lm-eval's ``wikitext_detokenizer``."""

from __future__ import annotations

import re


def wikitext_detokenizer(string: str) -> str:
  """lm-eval's ``wikitext_detokenizer``."""
  string = string.replace("s '", "s'")
  string = re.sub(r"/' [0-9]/", r"/'[0-9]/", string)
  string = string.replace(' @-@ ', '-')
  string = string.replace(' @,@ ', ',')
  string = string.replace(' @.@ ', '.')
  string = string.replace(' : ', ': ')
  string = string.replace(' ; ', '; ')
  string = string.replace(' . ', '. ')
  string = string.replace(' ! ', '! ')
  string = string.replace(' ? ', '? ')
  string = string.replace(' , ', ', ')
  string = re.sub(r'\(\s*([^\)]*?)\s*\)', r'(\1)', string)
  string = re.sub(r'\[\s*([^\]]*?)\s*\]', r'[\1]', string)
  string = re.sub(r'{\s*([^}]*?)\s*}', r'{\1}', string)
  string = re.sub(r'\"\s*([^\"]*?)\s*\"', r'"\1"', string)
  string = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", string)
  string = string.replace('= = = =', '====')
  string = string.replace('= = =', '===')
  string = string.replace('= =', '==')
  string = string.replace(' ' + chr(176) + ' ', chr(176))
  string = string.replace(' \n', '\n')
  string = string.replace('\n ', '\n')
  string = string.replace(' N ', ' 1 ')
  string = string.replace(" 's", "'s")
  return string


_HEADING = re.compile(r'^ (= )+[^=].*?( =)+ ?$')


def wikitext_documents(raw: str) -> list[str]:
  """Pages of a raw WikiText file, as EleutherAI/wikitext_document_level builds them.

  Blank lines (`` ``) that the HF-rows export dropped are put back around headings.
  """
  lines = raw.replace('\r\n', '\n').replace('\r', '\n').split('\n')
  if lines and lines[-1] == '':
    lines.pop()
  if not any(line.strip() == '' for line in lines):  # blank rows dropped: restore them
    full = []
    for line in lines:
      if _HEADING.match(line):
        full += [' ', line, ' ']
      else:
        full.append(line)
    lines = full
  lines.append('')  # the file's final newline
  pages, cur = [], []
  for line in lines:
    rline = line.replace('= = =', '===').replace('= =', '==').strip()
    if rline.startswith('= ') and rline.strip().endswith(' ='):
      page = '\n'.join(cur)
      if page.strip():
        pages.append(page)
      cur = []
    cur.append(line)
  page = '\n'.join(cur)
  if page.strip():
    pages.append(page)
  return pages
