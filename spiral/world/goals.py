"""Natural-language goals ⇄ goal predicates, and a task sampler (DESIGN §4).

A :class:`Goal` is a sequence of *stages*; each stage is a conjunction of predicate
literals in :mod:`spiral.world.domain` syntax (``"in(red_block, box)"``, ``"not open(box)"``).
Stages are achieved in order; a later stage may override what an earlier one asked of the
same fluent ("put red in the box, then move it to the left").

Grammar accepted by :func:`parse_goal` (everything is lower-cased; "please", "kindly",
"the", "a", "an", "now", "first", "just", "also", "can/could/would you" are ignored):

* Clauses are separated by ``,`` ``;`` ``.`` ``:`` ``!`` ``and``. **Only** ``then``,
  ``and then``, ``after that``, ``afterwards``, ``next``, ``finally`` and ``lastly`` start a
  new stage; every other separator keeps the clause in the current stage. A ``,``/``and``
  that is not followed by a verb coordinates objects instead ("put red and blue in the box").
* Objects: ``red|green|blue|yellow`` optionally followed by ``block|cube|one|brick`` (plurals
  too); ``all/every/each block``, ``everything``, ``all of them`` (= the four blocks);
  ``box|lid|container``; ``lamp|light``; ``it`` = the last mentioned object that fits the
  role (a block for moving/stacking, the box for open/close, the lamp for switching).
* Places: slots ``far left|leftmost``, ``left``, ``center|centre|middle``, ``right``,
  ``far right|rightmost`` (optionally followed by ``slot|position|spot|side|place|end``),
  "on the table at the left", a block ("on/onto/on top of the green one"), the box
  ("in/into/inside the box", "put X away"), "on the table" (= out of the box, on no block).
* Verbs: ``put place move set stack drop bring transfer slide push carry take lay position
  relocate shift get leave keep return`` + place → at/on/in; ``pack stow store`` (+ away) →
  in the box; ``take X out of the box`` / ``remove X from the box|Y`` / ``take X off Y`` /
  ``move X away from <slot>`` → negated location; ``open`` / ``close|shut`` the box (a
  closed box is fine for "put X in the box": the planner adds the open); ``turn|switch
  on|off`` the lamp (either word order); ``tidy up`` / ``clean up`` / ``clear the table`` →
  every block in the box; ``clear X`` → nothing on block/slot X; ``leave|keep the box
  open|closed`` / ``the lamp on|off``. A trailing "and <objects> <place>" reuses the verb.

Anything else raises :class:`GoalParseError`, which names the clause it could not read and
lists the known objects and verbs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from spiral.bench.seeds import is_reserved
from spiral.world.domain import BLOCKS, BOX, LAMP, SLOTS, DomainError, Pred, State

# ---------------------------------------------------------------------------------------------
# vocabulary

_COLORS = {b.split("_")[0]: b for b in BLOCKS}
_BLOCK_NOUNS = {"block", "blocks", "cube", "cubes", "one", "ones", "brick", "bricks"}
_BOX_WORDS = {"box", "lid", "container"}
_LAMP_WORDS = {"lamp", "light", "lights", "lamps"}
_TABLE_WORDS = {"table", "desk", "tabletop"}
_SLOT_WORDS = {"far_left": "far_left", "left": "left", "center": "center", "right": "right", "far_right": "far_right"}
_SLOT_NOUNS = {"slot", "position", "spot", "side", "place", "end", "area"}
_ALL_NOUNS = _BLOCK_NOUNS | {"objects", "things", "them", "object", "thing"}
_NUMBERS = {"4", "four"}

_MOVE_VERBS = {"put", "place", "move", "set", "stack", "drop", "bring", "transfer", "slide", "push", "carry",
               "take", "lay", "position", "relocate", "shift", "get", "leave", "keep", "return", "remove"}
_PACK_VERBS = {"pack", "stow", "store"}
_OPEN_VERBS = {"open"}
_CLOSE_VERBS = {"close", "shut"}
_SWITCH_VERBS = {"turn", "switch", "flip"}
_TIDY_VERBS = {"tidy"}
_CLEAR_VERBS = {"clear"}
_VERBS = _MOVE_VERBS | _PACK_VERBS | _OPEN_VERBS | _CLOSE_VERBS | _SWITCH_VERBS | _TIDY_VERBS | _CLEAR_VERBS

_STAGE = "THEN"  # internal token for every stage separator
_PUNCT = {",", ";", ".", ":", "!", "?"}
_FILLERS = {"please", "kindly", "the", "a", "an", "now", "first", "just", "also", "you", "can", "could", "would",
            "go", "ahead"}
# Multi-word phrases rewritten to one token before parsing (longest match first).
_PHRASES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("and", "then"): (_STAGE,), ("after", "that"): (_STAGE,), ("after", "this"): (_STAGE,),
    ("afterwards",): (_STAGE,), ("afterward",): (_STAGE,), ("then",): (_STAGE,), ("next",): (_STAGE,),
    ("finally",): (_STAGE,), ("lastly",): (_STAGE,),
    ("on", "top", "of"): ("onto",), ("on", "to"): ("onto",), ("in", "to"): ("into",), ("inside", "of"): ("into",),
    ("inside",): ("into",), ("out", "of"): ("outof",), ("away", "from"): ("awayfrom",), ("off", "of"): ("off",),
    ("far", "left"): ("far_left",), ("far", "right"): ("far_right",), ("leftmost",): ("far_left",),
    ("rightmost",): ("far_right",), ("centre",): ("center",), ("middle",): ("center",),
    ("tidy", "up"): ("tidy",), ("clean", "up"): ("tidy",), ("clean",): ("tidy",), ("put", "away"): ("pack",),
    ("i", "want", "you", "to"): (), ("make", "sure", "to"): (), ("go", "ahead", "and"): (),
}
_MAX_PHRASE = max(len(k) for k in _PHRASES)
_PREPS = {"in", "into", "onto", "on", "atop", "upon", "over", "above", "to", "at", "toward", "towards", "outof",
          "off", "awayfrom", "from", "away", "of", "up", "and", "back"}
_STATE_WORDS = {"open", "closed", "shut", "on", "off"}
_VOCAB = (set(_COLORS) | _BLOCK_NOUNS | _BOX_WORDS | _LAMP_WORDS | _TABLE_WORDS | set(_SLOT_WORDS) | _SLOT_NOUNS
          | _ALL_NOUNS | _NUMBERS | _VERBS | _PREPS | _STATE_WORDS | {"it", "all", "every", "each", "everything",
                                                                     "pack", _STAGE})

KNOWN_OBJECTS = ("red/green/blue/yellow block (cube, one)", "it", "all blocks / every block / everything",
                 "box (lid, container)", "lamp (light)", "table",
                 "slots: far left, left, center (centre, middle), right, far right")
KNOWN_VERBS = ("put/place/move/set/stack/drop/slide/... X in|on|to|at <place>", "pack/stow/store X (away)",
               "take X out of the box", "remove X from <place>", "take X off Y", "move X away from <slot>",
               "open", "close/shut", "turn/switch on|off", "tidy up / clean up / clear the table", "clear X",
               "leave/keep X open|closed|on|off", "separators: , ; . and — new stage: then, after that, finally")


def _did_you_mean(word: str) -> str:
    """`` (did you mean 'the'?)`` for a word one or two typos from a word the grammar knows, else ``""``.

    Typos are counted as edits where swapping two neighbouring letters is one ("teh" -> "the", "opne" ->
    "open"), which difflib's ratio ranks below shorter words ("one"); ties go to the word of the same length,
    then to difflib's ratio."""
    import difflib

    known = {w for w in _VOCAB | _FILLERS | {t for k in _PHRASES for t in k} if w.isalpha() and w.islower()}
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


class GoalParseError(ValueError):
    """A goal sentence the grammar cannot read; says which clause and what words it knows."""

    def __init__(self, clause: str, reason: str, goal: str | None = None):
        self.clause, self.reason, self.goal = clause, reason, goal
        self.known_objects, self.known_verbs = KNOWN_OBJECTS, KNOWN_VERBS
        where = f" in goal {goal!r}" if goal is not None and goal != clause else ""
        super().__init__(
            f"could not read {clause!r}{where}: {reason}. Known objects: {'; '.join(KNOWN_OBJECTS)}. "
            f"Known verbs: {'; '.join(KNOWN_VERBS)}."
        )


# ---------------------------------------------------------------------------------------------
# Goal


@lru_cache(maxsize=4096)
def _pred(text: str) -> Pred:
    return Pred.parse(text)


def _lit_key(text: str) -> tuple:
    """Canonical order inside a stage: by object (blocks in domain order, box, lamp), then text."""
    p = _pred(text)
    f = p.fluent()
    if f is not None and f.startswith("loc:"):
        group = BLOCKS.index(p.args[0]) if p.args[0] in BLOCKS else 9
    else:
        group = {"box": 4, "lamp": 5}.get(f or "", 6)
    return (group, p.negated, str(p))


def _merge_key(text: str) -> str:
    p = _pred(text)
    return p.fluent() or f"derived:{p.positive()}"


def canonical_stage(preds: Iterable[str]) -> tuple[str, ...]:
    """Normalise spelling, drop duplicates and sort, so that equal conjunctions compare equal."""
    norm = {str(_pred(p.strip())) for p in preds}
    return tuple(sorted(norm, key=_lit_key))


@dataclass(frozen=True)
class Goal:
    """A goal: its text and ordered stages, each a conjunction of predicate literals.

    Stages are stored canonically (normalised, deduplicated, sorted; empty stages dropped) so
    that two goals meaning the same thing compare equal whatever order their clauses came in.
    """

    text: str
    stages: tuple[tuple[str, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        try:
            stages = tuple(s for s in (canonical_stage(st) for st in self.stages) if s)
        except DomainError as e:
            raise GoalParseError(self.text, str(e)) from None
        object.__setattr__(self, "stages", stages)

    @classmethod
    def of(cls, *stages: Iterable[str] | str, text: str | None = None) -> Goal:
        """Build from predicate strings; each argument is one stage (a string is a one-literal stage)."""
        st = [[s] if isinstance(s, str) else list(s) for s in stages]
        return cls(text if text is not None else goal_to_text(st), tuple(tuple(s) for s in st))

    def targets(self) -> list[list[str]]:
        """Merged literals of stages[0..k] for every k: what must hold once stage k is done."""
        merged: dict[str, list[str]] = {}
        out = []
        for stage in self.stages:
            new: dict[str, list[str]] = {}
            for p in stage:
                new.setdefault(_merge_key(p), []).append(p)
            merged.update(new)  # a later stage replaces every earlier literal on the same fluent
            out.append([p for ps in merged.values() for p in ps])
        return out

    def final(self) -> list[str]:
        """All stages merged; a later stage overrides an earlier literal on the same fluent."""
        t = self.targets()
        return t[-1] if t else []

    def satisfied(self, state: State) -> bool:
        """Whether the final merged goal holds in ``state``."""
        return all(state.holds(p) for p in self.final())

    def __str__(self) -> str:
        return " ; then ".join(" & ".join(s) for s in self.stages)


# ---------------------------------------------------------------------------------------------
# parsing


def _tokenize(text: str) -> list[str]:
    t = text.lower().replace("’", "'")
    t = re.sub(r"[-_/]", " ", t)
    t = re.sub(r"([,;.:!?])", r" \1 ", t)
    t = re.sub(r"[\"'()\[\]]", " ", t)
    raw = t.split()
    out: list[str] = []
    i = 0
    while i < len(raw):
        for n in range(min(_MAX_PHRASE, len(raw) - i), 0, -1):
            rep = _PHRASES.get(tuple(raw[i:i + n]))
            if rep is not None:
                out.extend(rep)
                i += n
                break
        else:
            out.append(raw[i])
            i += 1
    return [w for w in out if w not in _FILLERS]


def _show(tokens: Sequence[str]) -> str:
    return " ".join("then" if w == _STAGE else w.replace("_", " ").replace("outof", "out of")
                    .replace("awayfrom", "away from") for w in tokens)


class _Cursor:
    """Token cursor over one clause, with the pronoun memory shared by the whole goal."""

    def __init__(self, tokens: list[str], mentions: list[str]):
        self.toks, self.i, self.mentions = tokens, 0, mentions

    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

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

    def fail(self, reason: str | None = None) -> GoalParseError:
        clause = _show(self.toks)
        if reason is None:
            w = self.peek()
            if w is None:
                reason = "the clause ends too early"
            elif w not in _VOCAB:
                reason = f"unknown word {w!r}{_did_you_mean(w)}"
            else:
                reason = f"did not expect {_show([w])!r} here"
        return GoalParseError(clause, reason)

    def mention(self, objs: list[str]) -> list[str]:
        self.mentions.extend(objs)
        return objs

    def pronoun(self, kinds: set[str], exclude: Iterable[str] = ()) -> str:
        """`it` = the last mentioned object of a fitting kind (block / box / lamp), other than ``exclude``."""
        for o in reversed(self.mentions):
            if _kind(o) in kinds and o not in exclude:
                return o
        raise self.fail(f"'it' does not refer to anything that fits ({'/'.join(sorted(kinds))}) yet")


def _kind(obj: str) -> str:
    return "block" if obj in BLOCKS else obj


def _starts_ref(w: str | None) -> bool:
    return w is not None and (w in _COLORS or w in _BOX_WORDS or w in _LAMP_WORDS
                              or w in {"it", "all", "every", "each", "everything"})


def _ref(c: _Cursor, kinds: set[str], exclude: Iterable[str] = ()) -> list[str] | None:
    """One object reference (possibly "all blocks"); None when the next word starts none."""
    w = c.peek()
    if w is None:
        return None
    if w == "it":
        c.take()
        return c.mention([c.pronoun(kinds, exclude)])
    if w in ("all", "every", "each", "everything"):
        c.take()
        if w != "everything":
            c.accept("of")
            c.accept(_NUMBERS)
            c.accept(_ALL_NOUNS)
        return c.mention(list(BLOCKS))
    if w in _COLORS:
        c.take()
        c.accept(_BLOCK_NOUNS)
        return c.mention([_COLORS[w]])
    if w in _BOX_WORDS:
        c.take()
        c.accept(_BOX_WORDS)  # "box lid"
        return c.mention([BOX])
    if w in _LAMP_WORDS:
        c.take()
        return c.mention([LAMP])
    if w in _BLOCK_NOUNS:
        raise c.fail("which block? name its colour: red, green, blue or yellow")
    return None


def _objects(c: _Cursor, kinds: set[str]) -> list[str]:
    """A coordinated list: "red, blue and the yellow cube"."""
    first = _ref(c, kinds)
    if first is None:
        raise c.fail()
    out = list(first)
    while c.peek() in (",", "and") and _starts_ref(c.peek(1)):
        c.take()
        out += _ref(c, kinds) or []
    return list(dict.fromkeys(out))


def _slot(c: _Cursor) -> str | None:
    w = c.accept(set(_SLOT_WORDS))
    if w is None:
        return None
    c.accept(_SLOT_NOUNS)
    if c.peek() == "of" and c.peek(1) in _TABLE_WORDS:
        c.i += 2
    return _SLOT_WORDS[w]


def _table_literals(b: str) -> list[str]:
    return [f"not in({b}, {BOX})"] + [f"not on({b}, {o})" for o in BLOCKS if o != b]


def _place(c: _Cursor, kinds: set[str], exclude: Iterable[str] = ()) -> tuple[str, str] | None:
    """A slot, the table, the box or a block: ("slot"|"table"|"box"|"block", name)."""
    s = _slot(c)
    if s is not None:
        return ("slot", s)
    if c.accept(_TABLE_WORDS):
        if c.peek() in ("at", "on", "in", "to", "toward", "towards", ",") and c.peek(1) in _SLOT_WORDS:
            c.take()
            return ("slot", _slot(c) or "")
        s = _slot(c)
        return ("slot", s) if s else ("table", "")
    objs = _ref(c, kinds, exclude)
    if objs is None:
        return None
    if len(objs) != 1:
        raise c.fail("a destination must be one place")
    o = objs[0]
    if o == LAMP:
        raise c.fail("blocks cannot be put on the lamp")
    return ("box", BOX) if o == BOX else ("block", o)


def _destination(c: _Cursor, blocks: list[str], verb: str) -> list[str]:
    """Literals for "<blocks> <preposition> <place>"."""
    w = c.peek()
    if w is None or (w == "and" and verb in _PACK_VERBS):
        if verb in _PACK_VERBS:
            c.mention([BOX])  # "put it away and close it": the box is implied
            return [f"in({b}, {BOX})" for b in blocks]
        raise c.fail("where should it go? say e.g. 'in the box', 'on the green block' or 'to the left'")
    if w == "away" and c.peek(1) != "from":
        c.take()
        c.mention([BOX])
        return [f"in({b}, {BOX})" for b in blocks]
    c.take()
    if w in ("in", "into"):
        kinds, mode = {"box"}, "pos"
    elif w in ("onto", "on", "atop", "upon", "over", "above"):
        kinds, mode = {"block"}, "pos"
    elif w in ("to", "at", "toward", "towards"):
        kinds, mode = {"block", "box"}, "pos"
    elif w in ("outof", "off", "awayfrom", "from"):
        kinds, mode = ({"box"} if w == "outof" else {"block", "box"}), "neg"
    else:
        c.i -= 1
        raise c.fail()
    place = _place(c, kinds, exclude=blocks)  # "stack red on it": `it` is not red itself
    if place is None:
        raise c.fail()
    kind, where = place
    out: list[str] = []
    for b in blocks:
        if kind == "block" and where == b:
            raise c.fail(f"the {b.replace('_', ' ')} cannot go on itself")
        if mode == "pos":
            if kind == "table":
                out += _table_literals(b)
            elif w in ("on", "onto", "atop", "upon", "over", "above") and kind == "box":
                raise c.fail("blocks go into the box, not on it")
            else:
                out.append({"slot": f"at({b}, {where})", "box": f"in({b}, {BOX})", "block": f"on({b}, {where})"}[kind])
        else:
            if kind == "table":
                raise c.fail("'off the table' is not a place; say where the block should go")
            out.append({"slot": f"not at({b}, {where})", "box": f"not in({b}, {BOX})",
                        "block": f"not on({b}, {where})"}[kind])
    return out


def _clause(tokens: list[str], mentions: list[str]) -> list[str]:
    """Literals of one clause (a verb phrase)."""
    c = _Cursor(tokens, mentions)
    verb = c.take()
    if verb not in _VERBS:
        c.i -= 1
        raise c.fail(None if verb not in _VOCAB else f"a clause must start with a verb, not {_show([verb])!r}")
    out: list[str]
    if verb in _OPEN_VERBS or verb in _CLOSE_VERBS:
        c.accept("up")
        objs = _objects(c, {"box"})
        c.accept("up")
        if objs != [BOX]:
            raise c.fail(f"only the box can be {'opened' if verb in _OPEN_VERBS else 'closed'}")
        out = ["open(box)" if verb in _OPEN_VERBS else "not open(box)"]
    elif verb in _SWITCH_VERBS:
        s1 = c.accept("on", "off")
        objs = _objects(c, {"lamp"})
        s2 = c.accept("on", "off")
        if objs != [LAMP]:
            raise c.fail("only the lamp can be switched on or off")
        if (s1 is None) == (s2 is None):
            raise c.fail("say 'on' or 'off' once")
        out = ["on(lamp)" if (s1 or s2) == "on" else "not on(lamp)"]
    elif verb in _TIDY_VERBS or (verb in _CLEAR_VERBS and c.peek() in _TABLE_WORDS | {"everything", "up"}):
        c.accept(_TABLE_WORDS | {"everything", "up"})
        c.mention(list(BLOCKS) + [BOX])
        out = [f"in({b}, {BOX})" for b in BLOCKS]
    elif verb in _CLEAR_VERBS:
        s = _slot(c)
        if s is not None:
            out = [f"free({s})"]
        else:
            objs = _objects(c, {"block"})
            if any(o not in BLOCKS for o in objs):
                raise c.fail("only a block or a slot can be cleared")
            out = [f"clear({o})" for o in objs]
    else:
        objs = _objects(c, {"block", "box", "lamp"} if verb in ("leave", "keep") else {"block"})
        if verb in ("leave", "keep") and objs in ([BOX], [LAMP]) and c.peek() in _STATE_WORDS:
            st = c.take()
            if objs == [BOX] and st in ("open", "closed", "shut"):
                out = ["open(box)" if st == "open" else "not open(box)"]
            elif objs == [LAMP] and st in ("on", "off"):
                out = ["on(lamp)" if st == "on" else "not on(lamp)"]
            else:
                raise c.fail(f"the {objs[0]} cannot be {st}")
        else:
            if any(o not in BLOCKS for o in objs):
                raise c.fail(f"only blocks can be moved, not the {[o for o in objs if o not in BLOCKS][0]}")
            c.accept("back")
            out = _destination(c, objs, verb)
            # gapping: "put red in the box and blue on the left" reuses the verb
            while c.peek() in (",", "and") and _starts_ref(c.peek(1)):
                c.take()
                more = _objects(c, {"block"})
                if any(o not in BLOCKS for o in more):
                    raise c.fail("only blocks can be moved")
                out += _destination(c, more, verb)
    if not c.done():
        raise c.fail()
    return out


def parse_goal(text: str) -> Goal:
    """Parse a natural-language goal into ordered stages of predicate literals (grammar: module doc)."""
    if not isinstance(text, str):
        raise GoalParseError(str(text), "a goal must be a string")
    tokens = _tokenize(text)
    stages: list[list[str]] = [[]]
    mentions: list[str] = []
    cur: list[str] = []
    n_clauses = [0]

    def flush() -> None:
        if cur:
            try:
                stages[-1].extend(_clause(list(cur), mentions))
            except GoalParseError as e:
                raise GoalParseError(e.clause, e.reason, text) from None
            n_clauses[-1] += 1
            cur.clear()

    i = 0
    while i < len(tokens):
        w = tokens[i]
        if w in _PUNCT or w in ("and", _STAGE):
            j, brk, hard = i, False, False
            while j < len(tokens) and (tokens[j] in _PUNCT or tokens[j] in ("and", _STAGE)):
                brk |= tokens[j] == _STAGE
                hard |= tokens[j] in _PUNCT - {","}
                j += 1
            nxt = tokens[j] if j < len(tokens) else None
            if brk or hard or nxt is None or nxt in _VERBS:
                flush()
                if brk and n_clauses[-1]:
                    stages.append([])
                    n_clauses.append(0)
            else:  # object coordination inside the clause
                cur.append("and" if "and" in tokens[i:j] else ",")
            i = j
            continue
        cur.append(w)
        i += 1
    flush()
    goal = Goal(text, tuple(tuple(s) for s in stages))
    if not goal.stages:
        raise GoalParseError(text, "no goal found (expected e.g. 'put the red block in the box')")
    return goal


# ---------------------------------------------------------------------------------------------
# goal → text


def _pick(rng: np.random.Generator | None, options: Sequence[str]) -> str:
    return options[0] if rng is None else options[int(rng.integers(len(options)))]


def _color(b: str) -> str:
    return b.split("_")[0]


def _block_np(b: str, rng: np.random.Generator | None, dest: bool = False) -> str:
    col = _color(b)
    opts = [f"the {col} block", f"the {col} cube", col] + ([f"the {col} one"] if dest else [])
    return _pick(rng, opts)


def _slot_np(s: str, rng: np.random.Generator | None) -> str:
    words = {"center": ["center", "middle", "centre"]}.get(s, [s.replace("_", " ")])
    w = _pick(rng, words)
    return _pick(rng, [f"the {w}", f"the {w} slot", f"the {w} position"])


def _blocks_np(bs: list[str], rng: np.random.Generator | None) -> str:
    if len(bs) == len(BLOCKS) and rng is not None and rng.random() < 0.8:
        return _pick(rng, ["all blocks", "every block", "all the cubes", "all four blocks", "everything"])
    if len(bs) == 1:
        return _block_np(bs[0], rng)
    cols = [_color(b) for b in bs]
    head = ", ".join(cols[:-1]) + " and " + cols[-1]
    return _pick(rng, [f"the {head} blocks", f"the {head} cubes", head])


def _loc_clause(lit: Pred, rng: np.random.Generator | None) -> str:
    b = lit.args[0]
    if lit.name == "in" and not lit.negated:
        v = _pick(rng, ["put", "place", "drop", "move"])
        return _pick(rng, [f"{v} {_block_np(b, rng)} {_pick(rng, ['in', 'into', 'inside'])} the "
                           f"{_pick(rng, ['box', 'box', 'container'])}", f"put {_block_np(b, rng)} away"])
    if lit.name == "in":
        return _pick(rng, [f"take {_block_np(b, rng)} out of the box", f"remove {_block_np(b, rng)} from the box"])
    d = lit.args[1]
    if lit.name == "on" and not lit.negated:
        return _pick(rng, [f"stack {_block_np(b, rng)} on {_block_np(d, rng, True)}",
                           f"put {_block_np(b, rng)} on top of {_block_np(d, rng, True)}",
                           f"place {_block_np(b, rng)} onto {_block_np(d, rng, True)}"])
    if lit.name == "on":
        return _pick(rng, [f"take {_block_np(b, rng)} off {_block_np(d, rng, True)}",
                           f"remove {_block_np(b, rng)} from {_block_np(d, rng, True)}"])
    if not lit.negated:  # at
        v = _pick(rng, ["move", "put", "place", "slide", "set"])
        return _pick(rng, [f"{v} {_block_np(b, rng)} to {_slot_np(d, rng)}",
                           f"put {_block_np(b, rng)} on the table at {_slot_np(d, rng)}",
                           f"place {_block_np(b, rng)} at {_slot_np(d, rng)}"])
    return f"move {_block_np(b, rng)} away from {_slot_np(d, rng)}"


def _stage_clauses(stage: Sequence[str], rng: np.random.Generator | None, pronoun_box: bool) -> list[tuple[str, bool]]:
    """Clauses for one stage as (text, mentions_box); coordinates blocks that go into the box."""
    preds = [_pred(p) for p in stage]
    clauses: list[tuple[str, bool]] = []
    into = [p.args[0] for p in preds if p.name == "in" and not p.negated]
    rest = [p for p in preds if not (p.name == "in" and not p.negated)]
    # "on the table" = out of the box and on no block
    for b in BLOCKS:
        table = {_pred(x) for x in _table_literals(b)}
        if table <= set(rest):
            rest = [p for p in rest if p not in table]
            clauses.append((f"{_pick(rng, ['put', 'place', 'set'])} {_block_np(b, rng)} on the table", False))
    if len(into) == len(BLOCKS) and rng is not None and rng.random() < 0.5:
        clauses.append((_pick(rng, ["tidy up", "clean up", "clear the table", "tidy up: put every block in the box",
                                    "put all blocks in the box"]), True))
    elif len(into) > 1 and rng is not None and rng.random() < 0.6:
        v = _pick(rng, ["put", "place", "move"])
        clauses.append((f"{v} {_blocks_np(into, rng)} {_pick(rng, ['in', 'into'])} the box", True))
    else:
        clauses += [(_loc_clause(Pred("in", (b, BOX)), rng), True) for b in into]
    for p in rest:
        if p.name in ("at", "in") or (p.name == "on" and len(p.args) == 2):
            clauses.append((_loc_clause(p, rng), p.name == "in"))
        elif p.name == "open":
            obj = _pick(rng, ["the box", "the lid", "the container"])
            if p.negated:
                clauses.append((f"{_pick(rng, ['close', 'shut'])} {obj}", True))
            else:
                clauses.append((f"open {obj}", True))
        elif p.name == "on":
            obj = _pick(rng, ["the lamp", "the light"])
            sw, v = _pick(rng, ["turn", "switch"]), "off" if p.negated else "on"
            clauses.append((_pick(rng, [f"{sw} {v} {obj}", f"{sw} {obj} {v}"]), False))
        elif p.name in ("clear", "free") and not p.negated:
            x = p.args[0]
            obj = _slot_np(x, rng) if x in SLOTS else f"the {_color(x)} block"
            clauses.append((f"clear {obj}", False))
        else:
            raise ValueError(f"no phrasing for goal literal {p}; expressible: at/on/in (and their negations), "
                             f"open(box), on(lamp) and their negations, clear(x), free(slot)")
    if rng is not None:
        order = rng.permutation(len(clauses))
        clauses = [clauses[int(i)] for i in order]
    # pronoun for the box: "put red in the box and close it"
    out = []
    prev_box = pronoun_box
    for text, box in clauses:
        if prev_box and rng is not None and rng.random() < 0.5:
            for v in ("close", "shut", "open"):
                for obj in ("the box", "the lid", "the container"):
                    if text == f"{v} {obj}":
                        text = f"{v} it"
        out.append((text, box))
        prev_box = box
    return out


def _render(stages: Sequence[Sequence[str]], rng: np.random.Generator | None) -> str:
    parts: list[str] = []
    prev_box = False
    for k, stage in enumerate(stages):
        clauses = _stage_clauses(stage, rng, prev_box)
        if not clauses:
            continue
        body = clauses[0][0]
        for text, _ in clauses[1:]:
            body += _pick(rng, [" and ", ", ", "; ", ", and "]) + text
        prev_box = clauses[-1][1]
        if not parts:
            parts.append(body)
        else:
            last = k == len(stages) - 1
            joins = [", then ", "; then ", ". Then ", ", and then ", ". After that, ", ", after that "]
            if last:
                joins += [". Finally, ", ", finally "]
            parts.append(_pick(rng, joins) + body)
    text = "".join(parts)
    if rng is not None:
        if rng.random() < 0.15:
            text = "please " + text
        text = text[0].upper() + text[1:]
        if rng.random() < 0.5:
            text += "."
    return text


def goal_to_text(stages: Sequence[Sequence[str]] | Goal, rng: np.random.Generator | None = None) -> str:
    """Natural-language text for ``stages`` (varied when ``rng`` is given) that parses back to them.

    The text is checked by parsing it; a phrasing that would not round-trip (it should not
    happen) falls back to the plain, pronoun-free phrasing.
    """
    st = stages.stages if isinstance(stages, Goal) else stages
    want = tuple(s for s in (canonical_stage(x) for x in st) if s)
    if not want:
        raise ValueError("a goal needs at least one predicate")
    text = _render(want, rng)
    try:
        if parse_goal(text).stages == want:
            return text
    except GoalParseError:
        pass
    text = _render(want, None)
    got = parse_goal(text).stages
    if got != want:  # a bug in the grammar or the phrasing, not in the caller's input
        raise AssertionError(f"goal text {text!r} parses to {got}, not {want}")
    return text


# ---------------------------------------------------------------------------------------------
# task sampler


@dataclass(frozen=True)
class Task:
    """A sampled tabletop task: initial state, goal and the optimal plan length."""

    id: str
    seed: int
    scene_seed: int
    state: State
    goal: Goal
    length: int


def sample_state(rng: np.random.Generator) -> State:
    """A random valid layout: blocks on slots, stacked or in the box; box open/closed; lamp on/off."""
    order = list(BLOCKS)
    rng.shuffle(order)
    loc: dict[str, str] = {}
    for b in order:
        used = set(loc.values())
        free = [s for s in SLOTS if s not in used]
        tops = [o for o in loc if loc[o] != BOX and o not in used]
        r = rng.random()
        if r < 0.25 or (not free and not tops):
            loc[b] = BOX
        elif (r < 0.55 and tops) or not free:
            loc[b] = tops[int(rng.integers(len(tops)))]
        else:
            loc[b] = free[int(rng.integers(len(free)))]
    return State.make(loc, box_open=bool(rng.random() < 0.5), lamp_on=bool(rng.random() < 0.5))


# goal clause types and their weights in sampled tasks
_CLAUSE_MIX = (("slot", 3.0), ("stack", 3.0), ("box", 3.0), ("lid", 1.0), ("lamp", 1.0), ("tidy", 0.7), ("out", 0.7),
               ("table", 0.3))


_MIX_KINDS = tuple(k for k, _ in _CLAUSE_MIX)
_MIX_CUM = np.cumsum([w for _, w in _CLAUSE_MIX]) / sum(w for _, w in _CLAUSE_MIX)


def _sample_clause(rng: np.random.Generator, state: State) -> list[str]:
    """One goal clause of a random type (weights in ``_CLAUSE_MIX``)."""
    kind = _MIX_KINDS[min(int(np.searchsorted(_MIX_CUM, rng.random(), side="right")), len(_MIX_KINDS) - 1)]
    b = _pick(rng, BLOCKS)
    if kind == "slot":
        return [f"at({b}, {_pick(rng, SLOTS)})"]
    if kind == "stack":
        return [f"on({b}, {_pick(rng, [x for x in BLOCKS if x != b])})"]
    if kind == "box":
        return [f"in({b}, {BOX})"]
    if kind == "lid":
        return ["not open(box)" if rng.random() < 0.5 else "open(box)"]
    if kind == "lamp":
        return ["not on(lamp)" if state.lamp_on else "on(lamp)"]
    if kind == "tidy":
        return [f"in({x}, {BOX})" for x in BLOCKS]
    if kind == "out":
        inside = state.in_box()
        return [f"not in({_pick(rng, inside)}, {BOX})"] if inside else [f"at({b}, {_pick(rng, SLOTS)})"]
    return _table_literals(b)


_MAX_STAGES = 4
_MAX_CLAUSES = 6


def sample_task(seed: int, min_steps: int = 1, max_steps: int = 8) -> Task:
    """A deterministic task for ``seed`` whose optimal plan has ``min_steps..max_steps`` actions.

    A target length is drawn uniformly first; clauses (each joined with "and" or "then")
    are added to a goal until its optimal plan reaches the target, and a fresh scene is
    tried on overshoot, so every length in range is about equally common. After many misses
    any length in range is accepted.
    """
    from spiral.planners.symbolic import PlanningError, SymbolicPlanner  # planners depend on goals

    if not 0 <= min_steps <= max_steps:
        raise ValueError(f"need 0 <= min_steps <= max_steps, got {min_steps}..{max_steps}")
    planner = SymbolicPlanner()
    rng = np.random.default_rng(seed)
    target = int(rng.integers(min_steps, max_steps + 1))
    found: tuple | None = None
    for attempt in range(1000):
        scene_seed = int(rng.integers(0, 2**31 - 1))
        if is_reserved(scene_seed):  # benchmark scenes are never sampled for training data
            continue
        state = sample_state(np.random.default_rng(scene_seed))
        stages: list[list[str]] = []
        n = 0
        for _ in range(_MAX_CLAUSES):
            clause = _sample_clause(rng, state)
            if stages and (len(stages) >= _MAX_STAGES or rng.random() < 0.55):
                trial = stages[:-1] + [stages[-1] + clause]
            else:
                trial = stages + [clause]
            goal = Goal("", tuple(tuple(x) for x in trial))
            try:
                n_trial = len(planner.solve(state, goal))
            except PlanningError:
                continue  # e.g. two blocks sent to one slot: try another clause
            stages, n = trial, n_trial
            if n >= target:
                break
        if stages and min_steps <= n <= max_steps and (n == target or found is None):
            found = (scene_seed, state, Goal("", tuple(tuple(x) for x in stages)), n)
        if found is not None and (found[3] == target or attempt >= 200):
            break
    if found is None:
        raise RuntimeError(f"could not sample a task with {min_steps}..{max_steps} steps for seed {seed}")
    scene_seed, state, goal, n = found
    goal = Goal(goal_to_text(goal.stages, rng), goal.stages)
    return Task(id=f"tabletop-{seed:06d}", seed=seed, scene_seed=scene_seed, state=state, goal=goal, length=n)
