"""A longer fuzz run of the ``.pth`` reader than the suite's (tests/test_pth_hostile.py):
``--n`` seeded mutations of valid zip and legacy files (tests/pth_fuzz.py: bytes flipped, files
cut, entries resized or declared other sizes, opcodes swapped, integer arguments changed), read
in a child process under a 1 GiB address-space limit (tests/pth_child.py).

Each must read as the original did or raise CheckpointError (only mutations that a reader
cannot tell from a valid file may read as other arrays); anything else (another exception, a
crash, a MemoryError) is listed. Prints a markdown table of the outcomes per mutation kind, and
exits non-zero if any case failed.

  python bench/fuzz_pth.py --n 100000 --seconds 600 --seed 0
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import platform
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # for tests/

from tests import pth_child, pth_fuzz  # pylint: disable=wrong-import-position

_OUTCOMES = ('same', 'changed', 'CheckpointError')


def table(counts: collections.Counter) -> str:
  """Markdown: per mutation kind, how many read as the original, as other values, were refused,
  or anything else."""
  rows = ['| mutation | ' + ' | '.join(_OUTCOMES) + ' | other |', '|---' * 5 + '|']
  for kind in sorted({k for k, _ in counts}):
    other = sum(n for (k, o), n in counts.items() if k == kind and o not in _OUTCOMES)
    rows.append(f'| {kind} | ' + ' | '.join(str(counts[kind, o]) for o in _OUTCOMES) +
                f' | {other} |')
  return '\n'.join(rows)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--n', type=int, default=10_000, help='mutations to read')
  parser.add_argument('--seconds', type=float, default=600, help='stop after this long')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  start = time.perf_counter()
  counts, seconds, rss, bad, last, end = collections.Counter(), [], 0, [], None, {}
  for line in pth_child.stream(['fuzz', '--seed', str(args.seed), '--n', str(args.n),
                                '--seconds', str(args.seconds)]):
    if 'start' in line:
      last = line
    elif 'outcome' in line:
      counts[line['kind'], line['outcome']] += 1
      seconds.append(line['seconds'])
      rss = max(rss, line['max_rss'])
      bad += pth_fuzz.failures([line])
    else:
      end = line
  print(f'{len(seconds)} mutations (seed {args.seed}) in {time.perf_counter() - start:.0f} s on '
        f'{platform.processor() or platform.machine()}; child exit status {end["rc"]}; median '
        f'{1e3 * statistics.median(seconds):.1f} ms, slowest {max(seconds):.2f} s a file; peak '
        f'RSS {rss >> 20} MiB\n')
  print(table(counts))
  if end['rc'] != 0:
    bad.append({'crashed at': last, 'rc': end['rc'], 'stderr': end['stderr']})
  for line in bad[:20]:
    print('FAILED', line)
  return 1 if bad else 0


if __name__ == '__main__':
  sys.exit(main())
