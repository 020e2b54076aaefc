"""Reading goal sentences: words → clauses → ordered blocks of goal literals (DESIGN §4).

:func:`spiral.world.goals.parse_goal` is the public entry; this module is its reader. It turns
text into *blocks* (the goal's stages, in execution order), each holding predicate literals in
:mod:`spiral.world.domain` syntax and *scene-relative clauses* — ``swap(a, b)``, ``next_to(a, x)``,
``left_of(a, x)``, ``right_of(a, x)``, ``place_of(a, x)``, ``shift(a, ±n)``, ``toggle(lamp|box)``,
``tower_any(b1, .., bn[, slot][, bottom=b][, top=b])`` —
whose literals depend on the scene and are fixed later against the state the planner observes
(:func:`spiral.world.goals.resolve_relative`).

How a sentence is read (the module doc of :mod:`spiral.world.goals` lists every construction):

1. **Words.** Lower-cased; possessive ``'s`` dropped ("the table's left slot"), ``->`` read as
   "to", ``&`` as "and"; multi-word phrases become one token ("on top of" → onto, "next to",
   "as well as" → and, "make sure" → nothing); ``-ing`` forms become their verb ("after opening
   the box"), past participles and filler words ("please", "could you", "down", "over", "up",
   "again", "back", "is", "should be", …) are dropped; numbered steps ("1.", "step 2:",
   "second,") become stage breaks.
2. **Clauses.** Separators are ``, ; . : ! ?``, "and", the stage words and the connectors
   "before"/"after"/"once"/"when". A ``,``/"and" that is not followed by a verb coordinates
   objects or continues the clause ("put red in the box and blue on the left"). Inside a tower
   clause a list of blocks may run over separators and "then" ("build a tower: red, then green").
3. **Stages.** Stage words and numbered steps start a new stage; "A before B" / "after B, A" /
   "A after B" / "once B, A" order their two parts; a clause that contradicts the current stage
   ("open the box, put red in and close it": open vs closed) starts a new stage after it, because
   a sentence lists what happens in order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from spiral.world.domain import BLOCKS, BOX, LAMP, Pred

_pred = lru_cache(maxsize=4096)(Pred.parse)

# ---------------------------------------------------------------------------------------------
# vocabulary

COLORS = {b.split("_")[0]: b for b in BLOCKS}
BLOCK_NOUNS = {"block", "cube", "one", "brick"}
BLOCK_PLURALS = {"blocks", "cubes", "ones", "bricks"}
BOX_WORDS = {"box", "lid", "container"}
LAMP_WORDS = {"lamp", "light", "lights", "lamps"}
TABLE_WORDS = {"table", "desk", "tabletop"}
SLOT_WORDS = {"far_left": "far_left", "left": "left", "center": "center", "right": "right", "far_right": "far_right"}
SLOT_NOUNS = {"slot", "position", "spot", "side", "place", "end", "area"}
TOWER_NOUNS = {"tower", "pile", "column", "stack"}
COUNTS = {"2": 2, "two": 2, "3": 3, "three": 3, "4": 4, "four": 4}
STEP_COUNTS = {"1": 1, "one": 1, **COUNTS}  # "two slots to the left"
STEP_NOUNS = {"slot", "slots", "space", "spaces", "step", "steps", "spot", "place", "position"}
ALL_WORDS = {"all", "every", "each", "everything"}
GROUP_PRONOUNS = {"them", "those", "these", "both"}

MOVE_VERBS = {"put", "place", "move", "set", "drop", "bring", "transfer", "slide", "push", "carry", "lay", "position",
              "relocate", "shift", "leave", "keep", "return", "remove", "stand", "rest", "stick", "dump", "toss",
              "throw", "chuck", "pop", "plop", "shove", "slip", "nudge", "deposit", "park", "plonk", "tuck"}
PICK_VERBS = {"pick", "grab", "lift", "take", "get", "hold", "fetch", "collect", "raise"}
STACK_VERBS = {"stack", "pile"}
BUILD_VERBS = {"build", "make", "form", "create", "assemble", "erect", "construct"}
PACK_VERBS = {"pack", "stow", "store"}
OPEN_VERBS = {"open"}
CLOSE_VERBS = {"close", "shut"}
SWITCH_VERBS = {"turn", "switch", "flip", "power", "toggle"}
SWAP_VERBS = {"swap", "exchange", "trade", "interchange"}
TIDY_VERBS = {"tidy"}
CLEAR_VERBS = {"clear"}
EMPTY_VERBS = {"empty"}
UNSTACK_VERBS = {"unstack"}
HAVE_VERBS = {"have"}
VERBS = (MOVE_VERBS | PICK_VERBS | STACK_VERBS | BUILD_VERBS | PACK_VERBS | OPEN_VERBS | CLOSE_VERBS | SWITCH_VERBS
         | SWAP_VERBS | TIDY_VERBS | CLEAR_VERBS | EMPTY_VERBS | UNSTACK_VERBS | HAVE_VERBS)

STAGE, BEFORE, AFTER = "THEN", "BEFORE", "AFTER"  # internal tokens (text is lower-cased, so no clash)
NEXTTO, BOTTOM, TOP, BOTTOM_UP, TOP_DOWN = "NEXTTO", "BOTTOM", "TOP", "BOTTOMUP", "TOPDOWN"
STACKED = "STACKED"  # "red, green and blue stacked (in that order)"
PUNCT = {",", ";", ".", ":", "!", "?"}
SEPARATORS = PUNCT | {"and", STAGE, BEFORE, AFTER}
UNDER_WORDS = {"under", "beneath", "below", "underneath"}
POS_PREPS = {"in", "into", "onto", "on", "atop", "upon", "over", "above", "to", "at", "toward", "towards"}
NEG_PREPS = {"outof", "off", "awayfrom", "from"}
STATE_WORDS = {"open", "closed", "shut", "on", "off"}

# dropped wherever they stand (after the phrases below are rewritten)
FILLERS = {
    "please", "kindly", "now", "first", "firstly", "just", "also", "you", "your", "can", "could", "would", "will",
    "shall", "go", "ahead", "again", "back", "down", "up", "thanks", "thank", "ok", "okay", "hey", "hi", "quickly",
    "carefully", "gently", "slowly", "neatly", "properly", "simply", "i", "we", "want", "wanna", "like", "need",
    "needs", "mind", "us", "try", "d", "re", "m", "ll", "ve", "should", "must", "is", "are", "be", "being", "been",
    "am", "was", "were", "stay", "stays", "remain", "remains", "sit", "sits", "lie", "lies", "belong", "belongs",
    "goes", "ends", "that", "so", "ensure", "done", "finished", "too", "around", "round", "places", "positions",
    "spots", "there's", "somebody", "let", "lets", "either", "whole", "entire", "pls", "plz", "thx", "ty", "thanx",
    "thnx", "simultaneously", "u", "ya",
}
ARTICLES = {"the", "a", "an"}

# Multi-word phrases rewritten to tokens before the fillers go (longest match first; articles are gone already).
PHRASES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("and", "then"): (STAGE,), ("after", "that"): (STAGE,), ("after", "this"): (STAGE,), ("afterwards",): (STAGE,),
    ("afterward",): (STAGE,), ("then",): (STAGE,), ("next",): (STAGE,), ("finally",): (STAGE,),
    ("lastly",): (STAGE,), ("second",): (STAGE,), ("secondly",): (STAGE,), ("third",): (STAGE,),
    ("thirdly",): (STAGE,), ("fourth",): (STAGE,), ("fourthly",): (STAGE,), ("fifth",): (STAGE,),
    ("once", "that", "is", "done"): (STAGE,), ("once", "that", "done"): (STAGE,), ("once", "done"): (STAGE,),
    ("when", "that", "is", "done"): (STAGE,), ("when", "that", "done"): (STAGE,), ("when", "done"): (STAGE,),
    ("before",): (BEFORE,), ("after",): (AFTER,), ("once",): (AFTER,), ("when",): (AFTER,),
    ("as", "soon", "as"): (AFTER,),
    ("next", "to"): (NEXTTO,), ("close", "to"): (NEXTTO,), ("beside",): (NEXTTO,), ("besides",): (NEXTTO,),
    ("alongside",): (NEXTTO,), ("adjacent", "to"): (NEXTTO,), ("by", "side", "of"): (NEXTTO,),
    ("on", "top", "of"): ("onto",), ("on", "to"): ("onto",), ("in", "to"): ("into",), ("inside", "of"): ("into",),
    ("inside",): ("into",), ("out", "of"): ("outof",), ("away", "from"): ("awayfrom",), ("off", "of"): ("off",),
    ("in", "there"): ("into", "box"), ("into", "there"): ("into", "box"), ("inside", "there"): ("into", "box"),
    ("far", "left"): ("far_left",), ("far", "right"): ("far_right",), ("leftmost",): ("far_left",),
    ("rightmost",): ("far_right",), ("left", "most"): ("far_left",), ("right", "most"): ("far_right",),
    ("left", "hand"): ("left",), ("right", "hand"): ("right",), ("centre",): ("center",), ("middle",): ("center",),
    ("tidy", "up"): ("tidy",), ("clean", "up"): ("tidy",), ("clean",): ("tidy",), ("clear", "up"): ("tidy",),
    ("put", "away"): ("pack",),
    ("i", "want", "you", "to"): (), ("make", "sure", "to"): (), ("make", "sure", "that"): (), ("make", "sure"): (),
    ("go", "ahead", "and"): (), ("would", "you", "mind"): (), ("do", "you", "mind"): (), ("thank", "you"): (),
    ("for", "me"): (), ("right", "now"): (), ("right", "away"): (), ("real", "quick"): (), ("if", "you", "can"): (),
    ("if", "possible"): (), ("as", "well", "as"): ("and",), ("along", "with"): ("and",), ("as", "well"): (),
    ("plus",): ("and",), ("but",): ("and",), ("end", "up"): (), ("ends", "up"): (), ("has", "to", "be"): (),
    ("have", "to", "be"): (), ("needs", "to", "be"): (), ("need", "to", "be"): (), ("ought", "to", "be"): (),
    ("to", "be"): (), ("in", "this", "order"): (), ("in", "that", "order"): (), ("in", "order"): (),
    ("positions", "of"): (), ("places", "of"): (), ("spots", "of"): (), ("at", "once"): (), ("one", "by", "one"): (),
    ("from", "bottom", "to", "top"): (BOTTOM_UP,), ("from", "bottom", "up"): (BOTTOM_UP,), ("bottom", "up"): (BOTTOM_UP,),
    ("from", "bottom"): (BOTTOM_UP,), ("from", "top", "to", "bottom"): (TOP_DOWN,), ("from", "top", "down"): (TOP_DOWN,),
    ("top", "down"): (TOP_DOWN,), ("from", "top"): (TOP_DOWN,),
    ("at", "bottom"): (BOTTOM,), ("on", "bottom"): (BOTTOM,), ("as", "base"): (BOTTOM,), ("at", "base"): (BOTTOM,),
    ("on", "top"): (TOP,), ("at", "top"): (TOP,), ("from", "top", "of"): ("off",), ("off", "top", "of"): ("off",),
    ("one", "tower"): ("tower",), ("one", "stack"): ("stack",), ("one", "pile"): ("pile",),
    ("single", "tower"): ("tower",), ("single", "stack"): ("stack",),
    ("all", "way", "to", "left"): ("to", "far_left"), ("all", "way", "to", "right"): ("to", "far_right"),
    ("all", "way", "over", "to", "left"): ("to", "far_left"), ("all", "way", "over", "to", "right"): ("to", "far_right"),
    ("all", "way", "left"): ("to", "far_left"), ("all", "way", "right"): ("to", "far_right"),
    ("at", "same", "time"): (), ("where", "it", "was"): ("where", "it"),
}
MAX_PHRASE = max(len(k) for k in PHRASES)
_IRREGULAR_PAST = {"took", "taken", "made", "built", "kept", "brought", "held", "laid", "got", "gotten", "thrown"}
_PARTICIPLE_STATES = {"opened": "open", "lit": "on", "stacked": STACKED, "piled": STACKED}

VOCAB = (set(COLORS) | BLOCK_NOUNS | BLOCK_PLURALS | BOX_WORDS | LAMP_WORDS | TABLE_WORDS | set(SLOT_WORDS) | SLOT_NOUNS
         | TOWER_NOUNS | set(COUNTS) | ALL_WORDS | GROUP_PRONOUNS | VERBS | POS_PREPS | NEG_PREPS | STATE_WORDS
         | UNDER_WORDS | STEP_NOUNS | {"it", "itself", "of", "with", "using", "as", "for", "out", "away", "top", "there",
                          "step", "where", "by", "1", STACKED,
                          "tidy", "pack", "outof", "awayfrom", STAGE, BEFORE, AFTER, NEXTTO, BOTTOM, TOP, BOTTOM_UP,
                          TOP_DOWN})


def _lemmas() -> dict[str, str]:
    """Inflected verb forms → the verb: -ing forms and 3rd person read as the verb, past forms dropped ('')."""
    out: dict[str, str] = {}
    for v in VERBS:
        stems = {v, v[:-1] if v.endswith("e") else v, v + v[-1]}
        for s in stems:
            out.setdefault(s + "ing", v)
            out.setdefault(s + "ed", "")
        out.setdefault(v + "s", v)
        out.setdefault(v + "es", v)
        out.setdefault(v[:-1] + "ied" if v.endswith("y") else v + "d", "")
    for k in _IRREGULAR_PAST:
        out[k] = ""  # a past form describes a state ("the red block taken out of the box"): drop it
    out.update(_PARTICIPLE_STATES)
    return {k: v for k, v in out.items() if k not in VOCAB or k in _PARTICIPLE_STATES}


LEMMAS = _lemmas()


# ---------------------------------------------------------------------------------------------
# words


def tokenize(text: str) -> list[str]:
    """Words of a goal sentence with phrases, inflections, numbering and fillers normalised (module doc, step 1)."""
    t = text.lower().replace("’", "'").replace("‘", "'").replace("`", "'")
    t = re.sub(r"(->|=>|→|⟶|⇒)", " to ", t)
    t = t.replace("&", " and ").replace("+", " and ")
    t = re.sub(r"'s\b", "", t)  # possessive ("the table's left slot") and "it's"/"that's"
    t = re.sub(r"n't\b", " not", t)
    t = re.sub(r"'(re|d|ll|ve|m)\b", r" \1", t)
    t = re.sub(r"(?:^|(?<=[\s,;.:!?]))(?:step\s*)?\d+\s*[.):](?=\s|$)", f" {STAGE} ", t)  # "1." "2)" "step 3:"
    t = re.sub(r"\bstep\s*\d+\b", f" {STAGE} ", t)
    t = re.sub(r"[-_/]", " ", t)
    t = re.sub(r"([,;.:!?])", r" \1 ", t)
    t = re.sub(r"[\"'()\[\]{}*#~]", " ", t)
    raw = [w for w in t.split() if w not in ARTICLES]
    out: list[str] = []
    i = 0
    while i < len(raw):
        for n in range(min(MAX_PHRASE, len(raw) - i), 0, -1):
            rep = PHRASES.get(tuple(raw[i:i + n]))
            if rep is not None:
                out.extend(rep)
                i += n
                break
        else:
            out.append(raw[i])
            i += 1
    out = ["it" if w in ("that", "this") and k and out[k - 1] in POS_PREPS | NEG_PREPS | UNDER_WORDS | {NEXTTO}
           else w for k, w in enumerate(out)]  # "put blue on top of that"
    words = []
    for w in out:
        w = LEMMAS.get(w, w)
        if w and w not in FILLERS:
            words.append(w)
    # "over" before a preposition or place is a filler ("slide it over to the left"); "one" before a tower noun too
    keep = []
    for k, w in enumerate(words):
        nxt = words[k + 1] if k + 1 < len(words) else None
        if w == "over" and (nxt in POS_PREPS or nxt in SLOT_WORDS or nxt in TABLE_WORDS or nxt == NEXTTO
                            or nxt in STEP_COUNTS or nxt == "by"):
            continue
        keep.append(w)
    return keep


def show(tokens: Sequence[str]) -> str:
    """Tokens back to readable words (for error messages)."""
    names = {STAGE: "then", BEFORE: "before", AFTER: "after", NEXTTO: "next to", BOTTOM: "at the bottom", STACKED: "stacked",
             TOP: "on top", BOTTOM_UP: "from the bottom up", TOP_DOWN: "from the top down", "outof": "out of",
             "awayfrom": "away from"}
    return " ".join(names.get(w, w.replace("_", " ")) for w in tokens)


# ---------------------------------------------------------------------------------------------
# clause results


class ParseFailure(Exception):
    """A clause the grammar cannot read: the clause (as words) and why."""

    def __init__(self, clause: str, reason: str):
        super().__init__(reason)
        self.clause, self.reason = clause, reason


@dataclass
class Clause:
    """What one clause asks for: concrete literals and scene-relative clauses."""

    literals: list[str] = field(default_factory=list)
    relative: list[str] = field(default_factory=list)


def rel(kind: str, *args: str) -> str:
    """A scene-relative clause as text, e.g. ``swap(red_block, blue_block)``."""
    return f"{kind}({', '.join(args)})"


def parse_rel(text: str) -> tuple[str, tuple[str, ...]]:
    """``"swap(red_block, blue_block)"`` → ``("swap", ("red_block", "blue_block"))``."""
    m = re.match(r"^\s*([a-z_]+)\((.*)\)\s*$", text)
    if not m:
        raise ValueError(f"not a scene-relative clause: {text!r}")
    return m.group(1), tuple(a.strip() for a in m.group(2).split(",") if a.strip())


RELATIVE_KINDS = ("swap", "next_to", "left_of", "right_of", "place_of", "shift", "toggle", "tower_any")


def fluents(literals: Iterable[str], relative: Iterable[str] = ()) -> dict[str, set[str]]:
    """State variables each item sets: loc:<block>, box, lamp → the values asked for (for contradiction checks)."""
    out: dict[str, set[str]] = {}
    for lit in literals:
        p = _pred(lit)
        f = p.fluent()
        if f is not None:
            out.setdefault(f, set()).add(str(p))
    for r in relative:
        kind, args = parse_rel(r)
        if kind == "toggle":
            out.setdefault(args[0] if args[0] == BOX else "lamp", set()).add(r)
        else:
            movers = args[:2] if kind == "swap" else args[:1] if kind != "tower_any" else [a for a in args
                                                                                            if a in BLOCKS]
            for b in movers:
                out.setdefault(f"loc:{b}", set()).add(r)
    return out


def contradicts(have: dict[str, set[str]], new: dict[str, set[str]]) -> bool:
    """Whether ``new`` asks a different value of a state variable than ``have`` (positive vs positive, or a literal
    and its negation); a scene-relative clause on the same variable counts as different."""
    for f, vals in new.items():
        for a in have.get(f, ()):
            for b in vals:
                if a == b:
                    continue
                ra, rb = a.split("(")[0] in RELATIVE_KINDS, b.split("(")[0] in RELATIVE_KINDS
                if ra or rb:  # a scene-relative place vs a positive place (or another relative one)
                    if not (a.startswith("not ") or b.startswith("not ")):
                        return True
                    continue
                pa, pb = _pred(a), _pred(b)
                if (not pa.negated and not pb.negated) or pa.positive() == pb.positive():
                    return True
    return False


# ---------------------------------------------------------------------------------------------
# the goal-wide reading context


@dataclass
class Context:
    """What earlier clauses said, shared by the whole goal: mentions for pronouns, the last group for
    "them"/"both", the last destination for ellipsis ("…, then the green one"), and blocks picked up
    that a later clause must put somewhere."""

    mentions: list[str] = field(default_factory=list)
    group: list[str] | None = None
    movers: list[str] = field(default_factory=list)  # the blocks the last clause moved ("…, then on the far right")
    last_place: Place | None = None
    picked: list[str] = field(default_factory=list)
    picked_clause: str = ""


@dataclass(frozen=True)
class Place:
    """A parsed destination: ``mode`` pos|neg|rel|under; ``kind`` slot|table|box|block|next_to|left_of|right_of."""

    mode: str
    kind: str
    where: str = ""
    chain: tuple[str, ...] = ()  # "on green on blue": further blocks below ``where``

    def literals(self, blocks: Sequence[str], fail) -> Clause:
        out = Clause()
        for b in blocks:
            if self.kind == "block" and self.where == b:
                raise fail(f"the {b.replace('_', ' ')} cannot go on itself")
            if self.mode == "rel":
                if self.where == b:
                    raise fail(f"the {b.replace('_', ' ')} cannot be next to, or in the place of, itself")
                out.relative.append(rel(self.kind, b, self.where))
            elif self.mode == "under":
                if len(blocks) != 1:
                    raise fail("only one block fits under another")
                out.literals.append(f"on({self.where}, {b})")
            elif self.mode == "pos":
                if self.kind == "table":
                    out.literals += table_literals(b)
                else:
                    out.literals.append({"slot": f"at({b}, {self.where})", "box": f"in({b}, {BOX})",
                                         "block": f"on({b}, {self.where})"}[self.kind])
            else:
                if self.kind == "table":
                    raise fail("'off the table' is not a place; say where the block should go")
                out.literals.append({"slot": f"not at({b}, {self.where})", "box": f"not in({b}, {BOX})",
                                     "block": f"not on({b}, {self.where})"}[self.kind])
        below = [self.where, *self.chain] if self.kind == "block" else []
        for top, under in zip(below, below[1:]):
            out.literals.append(f"on({top}, {under})")
        return out


def table_literals(b: str) -> list[str]:
    """"On the table" = out of the box and on no block."""
    return [f"not in({b}, {BOX})"] + [f"not on({b}, {o})" for o in BLOCKS if o != b]


# ---------------------------------------------------------------------------------------------
# one clause


def kind_of(obj: str) -> str:
    return "block" if obj in BLOCKS else obj


def starts_ref(w: str | None) -> bool:
    return w is not None and (w in COLORS or w in BOX_WORDS or w in LAMP_WORDS or w in ALL_WORDS
                              or w in GROUP_PRONOUNS or w in BLOCK_PLURALS or w in COUNTS or w == "it")


def starts_block_ref(w: str | None) -> bool:
    return w is not None and (w in COLORS or w in ALL_WORDS or w in GROUP_PRONOUNS or w in BLOCK_PLURALS
                              or w in COUNTS or w == "it")


def did_you_mean(word: str) -> str:
    """`` (did you mean 'the'?)`` for a word one or two typos from a word the grammar knows, else ``""``.

    Typos are counted as edits where swapping two neighbouring letters is one ("teh" -> "the", "opne" ->
    "open"), which difflib's ratio ranks below shorter words ("one"); ties go to the word of the same length,
    then to difflib's ratio."""
    import difflib

    known = {w for w in VOCAB | FILLERS | ARTICLES | {t for k in PHRASES for t in k} if w.isalpha() and w.islower()}
    limit = max(1, len(word) // 3)
    scored = [(_typos(word, w), abs(len(w) - len(word)), -difflib.SequenceMatcher(None, word, w).ratio(), w)
              for w in known - {word}]
    best = min((x for x in scored if x[0] <= limit), default=None)
    return f" (did you mean {best[-1]!r}?)" if best else ""


def _typos(a: str, b: str) -> int:
    """Edit distance counting insertions, deletions, substitutions and adjacent swaps (optimal string alignment)."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


class Cursor:
    """Token cursor over one clause, with the goal-wide context."""

    def __init__(self, tokens: list[str], ctx: Context):
        self.toks, self.i, self.ctx = tokens, 0, ctx
        self.last_word = ""  # the noun of the last reference ("lid" vs "box")

    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.toks[j] if 0 <= j < len(self.toks) else None

    def take(self) -> str:
        w = self.toks[self.i]
        self.i += 1
        return w

    def accept(self, *words: str | set[str]) -> str | None:
        w = self.peek()
        for x in words:
            if w is not None and (w == x if isinstance(x, str) else w in x):
                self.i += 1
                return w
        return None

    def done(self) -> bool:
        return self.i >= len(self.toks)

    def at_end(self, k: int = 0) -> bool:
        return self.peek(k) is None or self.peek(k) in (",", "and")

    def fail(self, reason: str | None = None) -> ParseFailure:
        if reason is None:
            w = self.peek()
            if w in (",", "and") and self.peek(1) is not None and self.peek(1) not in VOCAB:
                w = self.peek(1)  # "… and juggle the lamp": name the word that stopped the reading
            if w is None:
                reason = "the clause ends too early"
            elif w not in VOCAB:
                reason = f"unknown word {w!r}{did_you_mean(w)}"
            else:
                reason = f"did not expect {show([w])!r} here"
        return ParseFailure(show(self.toks), reason)

    def mention(self, objs: list[str]) -> list[str]:
        self.ctx.mentions.extend(objs)
        if sum(o in BLOCKS for o in objs) >= 2:
            self.ctx.group = [o for o in objs if o in BLOCKS]
        return objs

    def pronoun(self, kinds: set[str], exclude: Iterable[str] = ()) -> str:
        """`it` = the last mentioned object of a fitting kind; the box or lamp when only that one fits."""
        for o in reversed(self.ctx.mentions):
            if kind_of(o) in kinds and o not in exclude:
                return o
        if kinds == {"box"} or kinds == {"lamp"}:
            return BOX if kinds == {"box"} else LAMP
        raise self.fail(f"'it' does not refer to anything that fits ({'/'.join(sorted(kinds))}) yet")


def ref(c: Cursor, kinds: set[str], exclude: Iterable[str] = ()) -> tuple[list[str], bool] | None:
    """One object reference and whether it names its blocks one by one (not "all"/"them"); None if none starts."""
    w = c.peek()
    if w is None:
        return None
    c.last_word = w
    if w == "it":
        c.take()
        if c.peek() in ("open", "closed", "shut"):  # "leave it open": only the box opens
            return c.mention([BOX]), True
        return c.mention([c.pronoun(kinds, exclude)]), True
    if w == "itself":
        raise c.fail("a block cannot go on, or be swapped with, itself")
    if w in ("them", "those", "these"):
        c.take()
        if c.accept("all"):
            return c.mention(list(BLOCKS)), False
        c.accept(BLOCK_PLURALS)
        return c.mention(list(c.ctx.group or BLOCKS)), False
    if w == "both":
        c.take()
        if starts_block_ref(c.peek()) and c.peek() not in ("them", "of"):
            return ref(c, kinds, exclude)  # "both the red and the green block": a determiner
        c.accept("of")
        c.accept("them")
        c.accept(BLOCK_PLURALS)
        if not c.ctx.group or len(c.ctx.group) != 2:
            raise c.fail("'both' does not refer to two blocks named before; name them, e.g. 'the red and the blue "
                         "block'")
        return c.mention(list(c.ctx.group)), False
    if w in ALL_WORDS:
        c.take()
        if w != "everything":
            c.accept("of")
            c.accept("them")
            n = c.accept(set(COUNTS))
            if n is not None and COUNTS[n] != len(BLOCKS):
                raise c.fail(f"there are {len(BLOCKS)} blocks, not {n}")
            c.accept(BLOCK_PLURALS | BLOCK_NOUNS | {"objects", "things", "object", "thing"})
        return c.mention(list(BLOCKS)), False
    if w in BLOCK_PLURALS:
        c.take()
        return c.mention(list(BLOCKS)), False
    if w in COUNTS:
        c.take()
        n = COUNTS[w]
        c.accept(BLOCK_PLURALS | BLOCK_NOUNS)
        if n == len(BLOCKS):
            return c.mention(list(BLOCKS)), False
        if c.ctx.group and len(c.ctx.group) == n:
            return c.mention(list(c.ctx.group)), False
        raise c.fail(f"which {w} blocks? name their colours")
    if w in COLORS:
        c.take()
        c.accept(BLOCK_NOUNS | BLOCK_PLURALS)
        return c.mention([COLORS[w]]), True
    if w in BOX_WORDS:
        c.take()
        c.accept(BOX_WORDS)  # "box lid"
        return c.mention([BOX]), True
    if w in LAMP_WORDS:
        c.take()
        return c.mention([LAMP]), True
    if w in BLOCK_NOUNS:
        raise c.fail("which block? name its colour: red, green, blue or yellow")
    if w in TOWER_NOUNS or w == "top" and c.peek(1) in BLOCK_NOUNS | TOWER_NOUNS:
        raise c.fail(f"'the {show([w])} …' depends on the scene: name the blocks by colour, e.g. 'the red block'")
    return None


def objects(c: Cursor, kinds: set[str], joiners: tuple[str, ...] = (",", "and")) -> tuple[list[str], bool]:
    """A coordinated list ("red, blue and the yellow cube"), and whether every block in it was named."""
    first = ref(c, kinds)
    if first is None:
        raise c.fail()
    out, named = list(first[0]), first[1]
    while c.peek() in joiners and starts_ref(c.peek(1)):
        c.take()
        more = ref(c, kinds)
        if more is None:
            break
        out += more[0]
        named = named and more[1]
    out = list(dict.fromkeys(out))
    if sum(o in BLOCKS for o in out) >= 2:
        c.ctx.group = [o for o in out if o in BLOCKS]  # for a later "them" / "both"
    return out, named


def slot(c: Cursor) -> str | None:
    w = c.accept(set(SLOT_WORDS))
    if w is None:
        return None
    c.accept(SLOT_NOUNS)
    if c.peek() == "of" and c.peek(1) in TABLE_WORDS:
        c.i += 2
    return SLOT_WORDS[w]


def _side_of(c: Cursor) -> str | None:
    """"left of X" / "right side of X" (X a block) → left_of / right_of; None (nothing taken) otherwise."""
    w = c.peek()
    if w not in ("left", "right"):
        return None
    k = 1
    if c.peek(k) in SLOT_NOUNS:
        k += 1
    if c.peek(k) != "of" or not starts_block_ref(c.peek(k + 1)) or c.peek(k + 1) in TABLE_WORDS:
        return None
    c.i += k + 1
    return "left_of" if w == "left" else "right_of"


def _block_anchor(c: Cursor, exclude: Iterable[str]) -> str:
    got = ref(c, {"block"}, exclude)
    if got is None:
        raise c.fail()
    objs = got[0]
    if len(objs) != 1 or objs[0] not in BLOCKS:
        raise c.fail("'next to' / 'left of' needs one block to stand beside")
    return objs[0]


def place(c: Cursor, kinds: set[str], exclude: Iterable[str] = ()) -> tuple[str, str] | None:
    """A slot, the table, the box or a block: ("slot"|"table"|"box"|"block", name)."""
    s = slot(c)
    if s is not None:
        return ("slot", s)
    if c.accept(TABLE_WORDS):
        k = 1 if c.peek() == "," else 0  # "on the table, at the far left"
        if c.peek(k) in ("at", "on", "in", "to", "toward", "towards", ",") and c.peek(k + 1) in SLOT_WORDS:
            c.i += k + 1
            return ("slot", slot(c) or "")
        s = slot(c)
        return ("slot", s) if s else ("table", "")
    got = ref(c, kinds, exclude)
    if got is None:
        return None
    objs = got[0]
    if len(objs) != 1:
        raise c.fail("a destination must be one place")
    o = objs[0]
    if o == LAMP:
        raise c.fail("blocks cannot be put on the lamp")
    return ("box", BOX) if o == BOX else ("block", o)


def destination(c: Cursor, blocks: Sequence[str]) -> Place | None:
    """Where ``blocks`` should go, or be taken from; None when the clause names no place."""
    w = c.peek()
    if w is None or w in (",", "and"):
        return None
    if w == "away" and c.peek(1) != "from":
        c.take()
        c.mention([BOX])  # "put it away and close it"
        return Place("pos", "box", BOX)
    if w == "out":
        c.take()
        return Place("neg", "box", BOX)
    if w == NEXTTO:
        c.take()
        return Place("rel", "next_to", _block_anchor(c, blocks))
    if w == "where" and starts_block_ref(c.peek(1)):  # "put red where the green block is"
        c.take()
        return Place("rel", "place_of", _block_anchor(c, blocks))
    if w == TOP and c.at_end(1):  # "stack green on red, then place blue on top": on the block just placed
        c.take()
        under = [b for b in c.ctx.movers if b not in blocks]
        if not under:
            raise c.fail("on top of what? say e.g. 'on top of the green block'")
        return Place("pos", "block", under[-1])
    steps = _steps(c)
    if steps is not None:
        return Place("rel", "shift", str(steps))
    if w in UNDER_WORDS:
        c.take()
        x = _block_anchor(c, blocks)
        return Place("under", "block", x)
    side = _side_of(c)
    if side is not None:
        return Place("rel", side, _block_anchor(c, blocks))
    if w in ("in", "into") and (c.peek(1) is None or c.peek(1) in (",", "and")):
        c.take()  # "drop the yellow block inside": the box is the only thing with an inside
        c.mention([BOX])
        return Place("pos", "box", BOX)
    if w not in VOCAB:
        raise c.fail()
    if w not in POS_PREPS and w not in NEG_PREPS:
        if w in SLOT_WORDS or w in TABLE_WORDS:  # "red block the far left" after a dropped verb: read as "to"
            kind, where = place(c, {"block", "box"}, blocks) or ("", "")
            return Place("pos", kind, where)
        return None
    if w in ("off", "from") and c.at_end(1):
        c.take()  # "take the green block off (and put it …)": off whatever it stands on; a later clause says where
        return None
    if w in NEG_PREPS:
        later = next((k for k in range(c.i + 1, len(c.toks)) if c.toks[k] in POS_PREPS | {NEXTTO}), None)
        if later is not None:
            mark = c.i
            try:
                c.take()
                place(c, {"block", "box"}, blocks)
            except ParseFailure:
                c.i = later  # "from the top of the tower to the far left": the source is implied anyway
                return destination(c, blocks)
            c.i = mark
    c.take()
    if w in POS_PREPS and c.peek() in ("left", "right"):
        side = _side_of(c)
        if side is not None:
            return Place("rel", side, _block_anchor(c, blocks))
    if w in ("in", "into"):
        kinds, mode = {"box"}, "pos"
    elif w in ("onto", "on", "atop", "upon", "over", "above"):
        kinds, mode = {"block"}, "pos"
    elif w in ("to", "at", "toward", "towards"):
        kinds, mode = {"block", "box"}, "pos"
    else:
        kinds, mode = ({"box"} if w == "outof" else {"block", "box"}), "neg"
    got = place(c, kinds, exclude=blocks)  # "stack red on it": `it` is not red itself
    if got is None:
        raise c.fail()
    kind, where = got
    if kind == "slot" and where in ("left", "right") and c.peek() == "by":  # "move it to the left by one slot"
        c.take()
        n = _count(c)
        return Place("rel", "shift", str(n if where == "right" else -n))
    if kind == "block" and c.peek() in SLOT_NOUNS and w in POS_PREPS:  # "to the green block's spot"
        c.take()
        return Place("rel", "place_of", where)
    if mode == "pos" and kind == "box" and w in ("on", "onto", "atop", "upon", "over", "above"):
        raise c.fail("blocks go into the box, not on it")
    chain: list[str] = []
    if kind == "block":
        c.accept("top")  # "onto the blue block's top"
        while c.peek() in ("on", "onto", "atop", "upon") and starts_block_ref(c.peek(1)):
            c.take()
            nxt = _block_anchor(c, [where, *chain, *blocks])
            chain.append(nxt)
    if mode == "neg" and (c.peek() in POS_PREPS or c.peek() in (NEXTTO, "away") or c.peek() in UNDER_WORDS):
        to = destination(c, blocks)  # "from the left slot to the far right": the source is implied
        if to is not None:
            return to
    return Place(mode, kind, where, tuple(chain))


def _count(c: Cursor) -> int:
    w = c.accept(set(STEP_COUNTS))
    if w is None:
        raise c.fail("how many slots? say e.g. 'one slot to the left'")
    c.accept(STEP_NOUNS)
    return STEP_COUNTS[w]


def _steps(c: Cursor) -> int | None:
    """"two slots to the left", "one to the right", "left by one": a signed slot offset (nothing taken if not)."""
    k = 0
    if c.peek(k) in STEP_COUNTS:
        k += 1
        if c.peek(k) in STEP_NOUNS:
            k += 1
        if c.peek(k) in ("to", "toward", "towards"):
            k += 1
        if c.peek(k) in ("left", "right") and c.peek(k + 1) != "of":
            n = STEP_COUNTS[c.peek()]  # type: ignore[index]
            side = c.peek(k)
            c.i += k + 1
            c.accept(SLOT_NOUNS)
            return n if side == "right" else -n
    return None


def _fixture_state(c: Cursor, obj: str, word: str, verb: str) -> str | None:
    """"leave the box open", "get the lamp on", "put the lid on (the box)", "take the lid off", "lift the lid"."""
    st = c.peek()
    if obj == BOX:
        if st in ("open", "closed", "shut"):
            c.take()
            return "open(box)" if st == "open" else "not open(box)"
        if word == "lid" and st in ("on", "onto", "off", "outof"):
            c.take()
            c.accept(BOX_WORDS)
            return "not open(box)" if st in ("on", "onto") else "open(box)"
        if word == "lid" and verb in ("lift", "remove", "raise") and c.at_end():
            return "open(box)"
        return None
    if obj == LAMP and st in ("on", "off"):
        c.take()
        return "not on(lamp)" if st == "off" else "on(lamp)"
    return None


def _state_or_place(c: Cursor, objs: list[str], verb: str, out: Clause) -> bool:
    """The rest of "<objects> <state|place>"; False when nothing follows the objects."""
    if objs in ([BOX], [LAMP]):
        lit = _fixture_state(c, objs[0], c.last_word, verb)
        if lit is None:
            if c.at_end():
                return False
            if c.peek() in POS_PREPS | NEG_PREPS | {NEXTTO, "away"}:
                raise c.fail(f"only blocks can be moved, not the {objs[0]}")
            raise c.fail(f"the {objs[0]} can only be {'open or closed' if objs[0] == BOX else 'on or off'}")
        out.literals.append(lit)
        return True
    if any(o not in BLOCKS for o in objs):
        raise c.fail(f"only blocks can be moved, not the {[o for o in objs if o not in BLOCKS][0]}")
    if c.peek() in MOVE_VERBS | PICK_VERBS | STACK_VERBS and c.peek(1) in POS_PREPS | {"away"}:
        c.take()  # "I want the red block put in the box"
    if c.peek() in STATE_WORDS - {"on", "off"}:
        raise c.fail(f"a block cannot be {c.peek()}")
    where = destination(c, objs)
    if where is None:
        if verb in PACK_VERBS:
            c.mention([BOX])  # "put it away and close it": the box is implied
            where = Place("pos", "box", BOX)
        else:
            return False
    got = where.literals(objs, c.fail)
    out.literals += got.literals
    out.relative += got.relative
    if where.mode in ("pos", "rel", "under"):
        c.ctx.last_place = where
        c.ctx.picked = [b for b in c.ctx.picked if b not in objs]
    c.mention(objs)  # the moved blocks, not the place, are what a later "it" means ("take X off Y, put it …")
    c.ctx.movers = list(objs)
    return True


def _continue(c: Cursor, verb: str, out: Clause) -> None:
    """Gapping: "put red in the box and blue on the left", "… and the lid shut" reuse the clause's verb."""
    while c.peek() in (",", "and") and starts_ref(c.peek(1)):
        c.take()
        objs, _ = objects(c, {"block", "box", "lamp"})
        if not _state_or_place(c, objs, verb, out):
            if c.ctx.last_place is None:
                raise c.fail(f"what should happen to the {objs[0].replace('_', ' ')}?")
            got = c.ctx.last_place.literals(objs, c.fail)
            out.literals += got.literals
            out.relative += got.relative


def _tower(c: Cursor, items: list[str], named: bool) -> Clause:
    """A tower clause after its verb: "a (three block) tower (of|from|with) <list> [from the top down] [on <slot>]".

    A list names the blocks bottom first unless it says "from the top (down)"; "X at the bottom" /
    "X on top" fix single positions. A group without an order ("all the blocks", "them") leaves the
    order open: the planner takes the order that needs the fewest actions (``tower_any``).
    """
    count: int | None = None
    order: list[tuple[str, str]] = [(b, "") for b in items] if named else []
    group = None if named or not items else list(items)
    direction = BOTTOM_UP
    where: str | None = None
    while not c.done():
        w = c.peek()
        if w in COUNTS and (c.peek(1) in TOWER_NOUNS or c.peek(1) in BLOCK_NOUNS | BLOCK_PLURALS
                            and c.peek(2) in TOWER_NOUNS):
            count = COUNTS[c.take()]  # "a three block tower"
            c.accept(BLOCK_NOUNS | BLOCK_PLURALS)
        elif w in TOWER_NOUNS | {"of", "from", "with", "using", "outof", ",", ":", "and", "as"} | BLOCK_NOUNS:
            c.take()
        elif w in ("into", "in") and c.peek(1) in TOWER_NOUNS:
            c.take()
        elif w in (BOTTOM_UP, TOP_DOWN):
            direction = c.take()
        elif w in ("on", "at", "to", "onto", "in", "into") and (c.peek(1) in SLOT_WORDS or c.peek(1) in TABLE_WORDS):
            c.take()
            got = place(c, set())
            if got is None or got[0] != "slot":
                raise c.fail("a tower stands on a slot: say e.g. 'on the left slot'")
            where = got[1]
        elif w in (BOTTOM, TOP):
            c.take()
            if not order:
                raise c.fail(f"which block goes {show([w])}?")
            order[-1] = (order[-1][0], w)
        elif order and w in {"onto", "on", "atop", "upon"} | UNDER_WORDS and starts_block_ref(c.peek(1)):
            c.take()  # "with green on top of red": red goes right below green (or above, for "under")
            got = ref(c, {"block"})
            assert got is not None
            other = got[0][0]
            top = order.pop()
            order = [x for x in order if x[0] != other]
            order += [(other, ""), top] if w not in UNDER_WORDS else [top, (other, "")]
        elif starts_block_ref(w):
            if w in COUNTS:
                count = COUNTS[w]  # "a tower of the four blocks"
            got = ref(c, {"block"})  # one at a time: "…, red at the bottom" annotates a listed block
            assert got is not None
            objs, each = got
            if any(o not in BLOCKS for o in objs):
                raise c.fail("a tower is built of blocks")
            if not each:
                group = objs
                continue
            for b in objs:
                known = [k for k, (x, _) in enumerate(order) if x == b]
                if not known:
                    order.append((b, ""))
                elif c.peek() not in (BOTTOM, TOP):
                    raise c.fail(f"the {b.replace('_', ' ')} is named twice in the tower")
                else:  # "…, red at the bottom": a position for a block already listed
                    order.append(order.pop(known[0]))
        else:
            raise c.fail()
    blocks = [b for b, _ in order]
    if direction == TOP_DOWN:
        order = order[::-1]
    base = [b for b, p in order if p == BOTTOM]
    tops = [b for b, p in order if p == TOP]
    if len(base) > 1 or len(tops) > 1:
        raise c.fail("only one block can be at the bottom and one on top")
    middle = [b for b, p in order if not p]
    ordered = base + middle + tops
    if group is not None and blocks and set(blocks) != set(group):
        if set(blocks) < set(group) and all(p for _, p in order):
            # "every block on the far left, red at the bottom": the rest in any order
            c.mention(list(group))
            fixed = [f"bottom={b}" for b in base] + [f"top={b}" for b in tops]
            return Clause(relative=[rel("tower_any", *group, *([where] if where else []), *fixed)])
        raise c.fail("the listed blocks are not the group the tower was said to be made of")
    members = ordered or group or []
    if count is not None and count != len(members):
        raise c.fail(f"the tower was said to have {count} blocks but {len(members)} are named")
    if len(members) < 2:
        raise c.fail("a tower needs at least two blocks: say e.g. 'a tower of red, green and blue'")
    c.mention(list(members))
    if not ordered:  # an unordered group
        return Clause(relative=[rel("tower_any", *members, *([where] if where else []))])
    lits = [f"on({top}, {under})" for under, top in zip(ordered, ordered[1:])]
    if where:
        lits.append(f"at({ordered[0]}, {where})")
    return Clause(literals=lits)


def _is_tower_start(c: Cursor) -> bool:
    k = 0
    while c.peek(k) in COUNTS or c.peek(k) in BLOCK_NOUNS:
        k += 1
    return c.peek(k) in TOWER_NOUNS


def clause(tokens: list[str], ctx: Context) -> Clause:
    """Literals and scene-relative clauses of one clause (a verb phrase, or "<objects> <state|place>")."""
    c = Cursor(tokens, ctx)
    while c.peek() == "to":
        c.take()  # "I'd like you to put …"
    if c.peek() in HAVE_VERBS and c.peek(1) in VERBS:
        c.take()  # "once you have opened the box"
    w = c.peek()
    if w is None:
        raise c.fail()
    if (w in POS_PREPS | NEG_PREPS | {NEXTTO, "where"} or w in UNDER_WORDS) and ctx.movers:
        out = Clause()  # "put red on the far left, then on the far right": the same blocks again
        if not _state_or_place(c, list(ctx.movers), "put", out) or not c.done():
            raise c.fail()
        return out
    if w not in VERBS:
        if not starts_ref(w) and w not in BLOCK_NOUNS:
            raise c.fail(None if w not in VOCAB else f"a clause must start with a verb, not {show([w])!r}")
        return _declarative(c, "")
    verb = c.take()
    out = Clause()
    if verb in OPEN_VERBS | CLOSE_VERBS:
        objs, _ = objects(c, {"box"})
        if objs != [BOX]:
            raise c.fail(f"only the box can be {'opened' if verb in OPEN_VERBS else 'closed'}")
        out.literals.append("open(box)" if verb in OPEN_VERBS else "not open(box)")
    elif verb in SWAP_VERBS or (verb in ("switch", "flip") and starts_block_ref(c.peek()) and c.peek() != "it"):
        objs, _ = objects(c, {"block"}, (",", "and", "with", "for"))  # "swap red with green"
        if len(objs) != 2:
            raise c.fail(f"swapping needs two blocks, got {len(objs)}: say e.g. 'swap the red and the blue block'")
        if any(o not in BLOCKS for o in objs):
            raise c.fail("only blocks can be swapped")
        out.relative.append(rel("swap", *objs))
        c.mention(objs)
    elif verb in SWITCH_VERBS:
        s1 = c.accept("on", "off")
        objs, _ = objects(c, {"lamp"} if verb != "toggle" else {"lamp", "box"})
        s2 = c.accept("on", "off")
        if s1 is None and s2 is None and verb in ("toggle", "flip", "switch") and objs in ([LAMP], [BOX]):
            out.relative.append(rel("toggle", objs[0]))
        else:
            if objs != [LAMP]:
                raise c.fail("only the lamp can be switched on or off")
            if (s1 is None) == (s2 is None):
                raise c.fail("say 'on' or 'off' once")
            out.literals.append("on(lamp)" if (s1 or s2) == "on" else "not on(lamp)")
    elif verb in TIDY_VERBS or (verb in CLEAR_VERBS and c.peek() in TABLE_WORDS | {"everything"}):
        c.accept(TABLE_WORDS | {"everything"})
        c.mention(list(BLOCKS) + [BOX])
        out.literals += [f"in({b}, {BOX})" for b in BLOCKS]
    elif verb in CLEAR_VERBS:
        c.accept("off")
        s = slot(c)
        if s is not None:
            out.literals.append(f"free({s})")
        else:
            objs, _ = objects(c, {"block"})
            if any(o not in BLOCKS for o in objs):
                raise c.fail("only a block or a slot can be cleared")
            out.literals += [f"clear({o})" for o in objs]
    elif verb in EMPTY_VERBS:
        s = slot(c)
        if s is not None:
            out.literals.append(f"free({s})")
        else:
            objs, _ = objects(c, {"box"})
            if objs != [BOX]:
                raise c.fail("only the box or a slot can be emptied")
            out.literals += [f"not in({b}, {BOX})" for b in BLOCKS]
    elif verb in UNSTACK_VERBS:
        objs, _ = objects(c, {"block"})
        if any(o not in BLOCKS for o in objs):
            raise c.fail("only blocks can be unstacked")
        for b in objs:
            out.literals += table_literals(b)
    elif verb in BUILD_VERBS and _is_tower_start(c):
        out = _tower(c, [], False)
    elif verb in BUILD_VERBS | HAVE_VERBS:
        if verb not in ("make", "have"):
            raise c.fail(f"{verb} what? say e.g. '{verb} a tower of red, green and blue'")
        return _declarative(c, verb)
    elif verb in STACK_VERBS:
        if _is_tower_start(c):
            return _tower(c, [], False)
        objs, named = objects(c, {"block"})
        if any(o not in BLOCKS for o in objs):
            raise c.fail(f"only blocks can be stacked, not the {[o for o in objs if o not in BLOCKS][0]}")
        nxt = c.peek()
        tower_next = (nxt in ("into", "in", "as", "to") and c.peek(1) in TOWER_NOUNS) or nxt in (
            BOTTOM_UP, TOP_DOWN, ":", BOTTOM, TOP) or (nxt in ("on", "at") and c.peek(1) in SLOT_WORDS and len(objs) > 1)
        if c.done() and len(objs) >= 2 or tower_next:
            return _tower(c, objs, named)
        if not _state_or_place(c, objs, verb, out):
            raise c.fail("where should it go? say e.g. 'on the green block'")
        _continue(c, verb, out)
    elif verb in MOVE_VERBS | PICK_VERBS and c.peek() in ("in", "into") and starts_block_ref(c.peek(1)):
        c.take()  # "put in the red block": a particle before the object
        objs, _ = objects(c, {"block"})
        out.literals += [f"in({b}, {BOX})" for b in objs]
        c.ctx.movers = list(objs)
        c.mention([BOX])
    elif verb in PICK_VERBS and c.peek() == "out" and starts_ref(c.peek(1)):
        c.take()  # "take out the red block": a particle before the object
        objs, _ = objects(c, {"block"})
        if any(o not in BLOCKS for o in objs):
            raise c.fail("only blocks can be taken out of the box")
        c.accept("outof")
        c.accept(BOX_WORDS)
        out.literals += [f"not in({b}, {BOX})" for b in objs]
    else:  # move / pick / pack / leave / keep …
        objs, _ = objects(c, {"block", "box", "lamp"} if verb in ("leave", "keep", "get") else {"block"})
        if not _state_or_place(c, objs, verb, out):
            if verb in PICK_VERBS and all(o in BLOCKS for o in objs):
                ctx.picked = list(objs)  # "pick up X and put it on Y": a later clause must say where
                ctx.picked_clause = show(tokens)
            elif objs in ([BOX], [LAMP]):
                raise c.fail(f"what should happen to the {objs[0]}?")
            else:
                raise c.fail("where should it go? say e.g. 'in the box', 'on the green block' or 'to the left'")
        _continue(c, verb, out)
    if not c.done():
        raise c.fail()
    return out


def _declarative(c: Cursor, verb: str) -> Clause:
    """"the box (should be) open", "red block in the box", "I want the lamp on and the lid shut", and
    ellipsis: "…, then the green one" repeats the last destination."""
    out = Clause()
    objs, named = objects(c, {"block", "box", "lamp"})
    if c.accept(STACKED):  # "I'd like red, green and blue stacked (in that order)": a tower, first named at the bottom
        if c.peek() in POS_PREPS and c.peek(1) not in SLOT_WORDS | TABLE_WORDS:
            got = Clause()
            if not _state_or_place(c, objs, "stack", got) or not c.done():
                raise c.fail()
            return got
        return _tower(c, objs, named)
    if not _state_or_place(c, objs, verb or "put", out):
        last = c.ctx.last_place
        if last is None or any(o not in BLOCKS for o in objs) or not c.at_end():
            if c.done() or c.at_end():
                raise c.fail(f"what should happen to the {objs[0].replace('_', ' ')}? say e.g. 'put the "
                             f"{objs[0].replace('_', ' ')} in the box'")
            raise c.fail()
        got = last.literals(objs, c.fail)
        out.literals += got.literals
        out.relative += got.relative
    _continue(c, verb or "put", out)
    if not c.done():
        raise c.fail()
    return out


# ---------------------------------------------------------------------------------------------
# the whole goal


@dataclass
class Block:
    """One stage being read: its literals, scene-relative clauses and the state variables they set."""

    literals: list[str] = field(default_factory=list)
    relative: list[str] = field(default_factory=list)
    clauses: int = 0

    def fluents(self) -> dict[str, set[str]]:
        return fluents(self.literals, self.relative)


def _tower_mode(cur: list[str]) -> bool:
    """Whether the clause being collected is a tower clause whose block list may run over separators."""
    if not cur or cur[0] not in BUILD_VERBS | STACK_VERBS:
        return False
    return any(t in TOWER_NOUNS or t in (BOTTOM_UP, TOP_DOWN, BOTTOM, TOP) for t in cur[1:]) or (
        cur[0] in STACK_VERBS and any(t in ALL_WORDS or t in BLOCK_PLURALS for t in cur[1:]))


def read(text: str) -> list[tuple[list[str], list[str]]]:
    """Stages of ``text`` in execution order, each (literals, scene-relative clauses); raises :class:`ParseFailure`."""
    tokens = tokenize(text)
    ctx = Context()
    blocks: list[Block] = [Block()]
    order: list[int] = [0]
    cur_block = 0
    cur: list[str] = []
    lead: str | None = None  # a leading "before"/"after" whose condition is being read
    lead_block = 0

    def new_block(where: str, ref_block: int) -> int:
        blocks.append(Block())
        k = len(blocks) - 1
        pos = order.index(ref_block)
        order.insert(pos if where == "before" else pos + 1, k) if where != "end" else order.append(k)
        return k

    def flush() -> None:
        nonlocal cur_block
        if not cur:
            return
        got = clause(list(cur), ctx)
        cur.clear()
        b = blocks[cur_block]
        if (got.literals or got.relative) and contradicts(b.fluents(), fluents(got.literals, got.relative)):
            cur_block = new_block("after", cur_block)  # "open the box, put red in and close it": in order
            b = blocks[cur_block]
        b.literals += got.literals
        b.relative += got.relative
        b.clauses += 1

    i = 0
    while i < len(tokens):
        w = tokens[i]
        if w not in SEPARATORS:
            cur.append(w)
            i += 1
            continue
        j, brk, hard, conn = i, False, False, None
        while j < len(tokens) and tokens[j] in SEPARATORS:
            brk |= tokens[j] == STAGE
            hard |= tokens[j] in PUNCT - {","}
            conn = tokens[j] if tokens[j] in (BEFORE, AFTER) else conn
            j += 1
        nxt = tokens[j] if j < len(tokens) else None
        if conn is None and _tower_mode(cur) and (starts_block_ref(nxt) or nxt in (BOTTOM, TOP)):
            cur.append(",")  # "build a tower: red, then green, then blue"
            i = j
            continue
        if not (brk or hard or conn or nxt is None or nxt in VERBS or lead is not None and "," in tokens[i:j]):
            cur.append("and" if "and" in tokens[i:j] else ",")  # coordination inside the clause
            i = j
            continue
        started = bool(cur) or blocks[cur_block].clauses > 0
        flush()
        if lead is not None and (brk or hard or "," in tokens[i:j] or nxt in VERBS):
            # end of a leading condition: "after opening the box, put …" / "before you close it, put …"
            cur_block = new_block("after" if lead == AFTER else "before", lead_block)
            lead = None
        if conn is not None:
            if not started and lead is None:  # the sentence (or stage) starts with the connector
                lead = conn
                lead_block = cur_block if blocks[cur_block].clauses == 0 else new_block("end", cur_block)
                cur_block = lead_block
            else:  # "X before Y": Y after X; "X after Y": Y before X
                cur_block = new_block("after" if conn == BEFORE else "before", cur_block)
        elif brk and blocks[cur_block].clauses:
            cur_block = new_block("end", cur_block)
        i = j
    flush()
    if ctx.picked:
        names = " and ".join(b.replace("_", " ") for b in ctx.picked)
        raise ParseFailure(ctx.picked_clause, f"where should the {names} go? say e.g. 'pick up the {names} and "
                                              "put it in the box'")
    return [(blocks[k].literals, blocks[k].relative) for k in order if blocks[k].literals or blocks[k].relative]
