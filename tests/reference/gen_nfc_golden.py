"""Generates tests/data/tokenizer/nfc-golden.json, the NFC results that
tests/test_tokenizer.c compares lorac's NFC normalizer (src/tokenizer/nfc.c)
with, as HuggingFace's tokenizers computes NFC: with Unicode 9.0's tables
(its crate unicode-normalization-alignments 0.1.12), in which a character
assigned later has combining class 0 and no decomposition.

The reference is an NFC written here from UAX #15's definition (canonical
decomposition, canonical ordering, canonical composition), over Python's
unicodedata for the characters Unicode 9.0 had (their data never changes:
Unicode's stability policy; which ones they are comes from Perl's
Unicode::UCD), independent of lorac's C code. On every case made only of
such characters it must equal Python's own unicodedata.normalize("NFC"),
which the generator checks.

Cases:
  * every code point whose NFC is not itself (singletons, composition
    exclusions, decomposing non-starters, Hangul syllables are left out:
    they are their own NFC),
  * every primary composite written decomposed (base + mark(s)),
  * the Hangul forms: LV, LVT and lone jamo sequences,
  * every character assigned after Unicode 9.0 that Python's later data
    gives a combining class or a decomposition, alone and between two
    marks of different classes ("a" U+0323 x U+0301, where such a mark
    would reorder and compose in a later Unicode, and does not in 9.0),
  * seeded random sequences from a pool of starters, combining marks of
    many classes, jamo and excluded characters, which exercise canonical
    ordering and blocking, and two long ones (2,500 clusters of a letter
    and 1-4 marks), which cross the chunk cuts of lorac's NFC.

Run once and commit (needs perl, for the ages):
    python3 tests/reference/gen_nfc_golden.py > tests/data/tokenizer/nfc-golden.json
"""
import json
import random
import subprocess
import sys
import unicodedata

VERSION = "9.0"
S_BASE, L_BASE, V_BASE, T_BASE, L_COUNT, V_COUNT, T_COUNT = 0xAC00, 0x1100, 0x1161, 0x11A7, 19, 21, 28
N_COUNT, S_COUNT = V_COUNT * T_COUNT, L_COUNT * V_COUNT * T_COUNT


def present_in(version):
    out = subprocess.run(["perl", "-MUnicode::UCD=prop_invlist", "-e",
                          f'print join(",", prop_invlist("Present_In={version}"))'],
                         capture_output=True, text=True, check=True).stdout
    bounds = [int(x) for x in out.split(",")] + [0x110000]
    return {cp for i in range(0, len(bounds) - 1, 2) for cp in range(bounds[i], bounds[i + 1])}


ASSIGNED = present_in(VERSION)


def ccc(cp):
    return unicodedata.combining(chr(cp)) if cp in ASSIGNED else 0


def canonical_parts(cp):
    """cp's one-level canonical decomposition in Unicode 9.0, or None."""
    if cp not in ASSIGNED:
        return None
    d = unicodedata.decomposition(chr(cp))
    if not d or d.startswith("<"):
        return None
    return [int(x, 16) for x in d.split()]


def decompose(cp, out):
    if S_BASE <= cp < S_BASE + S_COUNT:
        i = cp - S_BASE
        out += [L_BASE + i // N_COUNT, V_BASE + i % N_COUNT // T_COUNT]
        if i % T_COUNT:
            out.append(T_BASE + i % T_COUNT)
        return
    parts = canonical_parts(cp)
    if parts is None:
        out.append(cp)
    else:
        for p in parts:
            decompose(p, out)


# primary composites: two-part canonical decompositions whose result is not excluded from composition
COMPOSE = {}
for _cp in ASSIGNED:
    _parts = canonical_parts(_cp)
    if _parts and len(_parts) == 2 and unicodedata.normalize("NFC", chr(_cp)) == chr(_cp):
        COMPOSE[tuple(_parts)] = _cp


def compose_pair(a, b):
    if L_BASE <= a < L_BASE + L_COUNT and V_BASE <= b < V_BASE + V_COUNT:
        return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT
    if S_BASE <= a < S_BASE + S_COUNT and (a - S_BASE) % T_COUNT == 0 and T_BASE < b < T_BASE + T_COUNT:
        return a + (b - T_BASE)
    return COMPOSE.get((a, b))


def nfc(s):
    cps = []
    for ch in s:
        decompose(ord(ch), cps)
    i = 0  # canonical ordering: stable sort of each run of non-starters by class
    while i < len(cps):
        if ccc(cps[i]) == 0:
            i += 1
            continue
        j = i
        while j < len(cps) and ccc(cps[j]) != 0:
            j += 1
        cps[i:j] = sorted(cps[i:j], key=ccc)
        i = j
    out, starter, last_ccc = [], None, -1  # canonical composition
    for cp in cps:
        c = ccc(cp)
        if starter is not None and (last_ccc < c or (last_ccc == -1 and c == 0)):
            comp = compose_pair(out[starter], cp)
            if comp is not None:
                out[starter] = comp
                continue
        if c == 0:
            starter, last_ccc = len(out), -1
        else:
            last_ccc = c
        out.append(cp)
    return "".join(map(chr, out))


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
    later = [cp for cp in range(0x110000) if cp not in ASSIGNED and not 0xD800 <= cp <= 0xDFFF and
             (unicodedata.combining(chr(cp)) or unicodedata.decomposition(chr(cp)))]
    for cp in later:
        cases += [chr(cp), "a\u0323" + chr(cp) + "\u0301"]
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
    for c in cases:  # on Unicode 9.0's characters the reference is Python's own NFC
        if all(ord(ch) in ASSIGNED for ch in c):
            assert nfc(c) == unicodedata.normalize("NFC", c), [hex(ord(ch)) for ch in c]
    doc = {"generator": "tests/reference/gen_nfc_golden.py", "unicode": VERSION + ".0",
           "cases": [[s, nfc(s)] for s in cases]}
    json.dump(doc, sys.stdout, ensure_ascii=False, separators=(",", ":"))
    sys.stdout.write("\n")
    print(f"{singles} single code points, {len(composites)} decomposed composites, {len(later)} characters "
          f"after Unicode {VERSION} with normalization data, {len(cases)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
