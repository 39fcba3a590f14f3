"""Generates tests/data/tokenizer/nfc-golden.json, the NFC results that
tests/test_tokenizer.c compares lorac's NFC normalizer (src/tokenizer/nfc.c)
with: Python's own unicodedata.normalize("NFC", ...), an implementation
independent of lorac's (lorac's tables come from unicodedata's per-character
data, scripts/gen-nfc-tables.py; the algorithm that applies them is lorac's).

Cases:
  * every code point whose NFC is not itself (singletons, composition
    exclusions, decomposing non-starters, Hangul syllables are left out:
    they are their own NFC),
  * every primary composite written decomposed (base + mark(s)),
  * the Hangul forms: LV, LVT and lone jamo sequences,
  * seeded random sequences from a pool of starters, combining marks of
    many classes, jamo and excluded characters, which exercise canonical
    ordering and blocking, and two long ones (2,500 clusters of a letter
    and 1-4 marks), which cross the chunk cuts of lorac's NFC.

Run with the python3 that built nfc_tables.h (the same Unicode version):
    python3 tests/reference/gen_nfc_golden.py > tests/data/tokenizer/nfc-golden.json
"""
import json
import random
import sys
import unicodedata


def nfc(s):
    return unicodedata.normalize("NFC", s)


def main():
    cases = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        if nfc(c) != c:
            cases.append(c)
    singles = len(cases)
    composites = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF or 0xAC00 <= cp <= 0xD7A3:
            continue
        c = chr(cp)
        d = unicodedata.normalize("NFD", c)
        if d != c and nfc(d) == c:
            composites.append(c)
            cases.append(d)
    cases += ["\u1100\u1161", "\u1100\u1161\u11a8", "\uac00\u11a8", "\u1100\u1100\u1161\u1161", "\u11a8\u1100",
              "\uac01\u11a8", "\u1100\u1161\u0301\u11a8", "\u1112\u1175\u11ab\u1100\u116e\u11af"]
    marks = [chr(c) for c in range(0x300, 0x370)] + ["\u0591", "\u05b0", "\u0610", "\u064b", "\u0670", "\u093c",
                                                     "\u094d", "\u0e38", "\u0f71", "\u0f72", "\u0f74", "\u0f80",
                                                     "\u302a", "\u3099", "\u309a", "\u1dc0", "\u20d0", "\ufe20"]
    starters = list("aeiouAEIOUnNcCsSzZyYwWkK") + ["\u03b1", "\u03b7", "\u03c9", "\u0391", "\u0418", "\u0435",
                                                  "\u0627", "\u0928", "\u0915", "\u0f40", "\u304b", "\u30cf",
                                                  "\u0b47", "\u0bc6", "\u0cc6", "\u0d46", "\u0dd9", "\u1025",
                                                  "\u1b05", "\u00e9", "\u1ea1", "\u212b", "\u0958", "\u2126",
                                                  "\u0344", "\u0f73", "\u1100", "\u1161", "\u11a8", "\uac00",
                                                  "\ud55c", " ", "x"]
    pool = marks + starters + [c for c in composites[:400:7]]
    rng = random.Random(2026)
    for _ in range(3000):
        cases.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 9))))
    # two long texts from the same pool: lorac normalizes long text in chunks, cut before starters
    # that nothing composes with, and these cross many cuts in every context
    # clusters of a letter and 1-4 marks, most of which compose with it or reorder: a cut inside one
    # would show
    bases, cmarks = list("aeiouAEIOUnyzc") + ["\u03b1", "\u03c9"], ["\u0300", "\u0301", "\u0302", "\u0303",
                                                                  "\u0308", "\u0323", "\u031b", "\u0327",
                                                                  "\u0313", "\u0345"]
    for _ in range(2):
        cases.append("".join(rng.choice(bases) + "".join(rng.choice(cmarks) for _ in range(rng.randint(1, 4)))
                             for _ in range(2500)))
    doc = {"generator": "tests/reference/gen_nfc_golden.py", "unicode": unicodedata.unidata_version,
           "cases": [[s, nfc(s)] for s in cases]}
    json.dump(doc, sys.stdout, ensure_ascii=False, separators=(",", ":"))
    sys.stdout.write("\n")
    print(f"{singles} single code points, {len(composites)} decomposed composites, {len(cases)} cases",
          file=sys.stderr)


if __name__ == "__main__":
    main()
