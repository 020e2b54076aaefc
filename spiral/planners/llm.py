"""PlanAgent backed by any OpenAI-compatible chat model (planner ``llm``; extra ``spiral[api]``).

The model sees the goal, the observed scene (symbolic state when known, first frame as an image
unless ``send_image`` is off) and, when re-planning, what happened so far; it answers with a JSON
plan whose steps carry pre/post-conditions. The reply is validated as ``spiral.types.Plan``.

A language model's plan can name actions the video generator cannot perform. With a known
``domain`` (``tabletop``) the planner checks each step before returning it, through the
``validate_plan`` hook: with ``validate: syntax`` verbs, objects and predicates must exist in the
domain; with ``validate: simulate`` (default) the steps must also apply one after another from the
observed state and reach the goal when the goal text parses. Problems go back to the model as a
repair request; when the repairs run out, ``on_invalid: error`` raises one clear line, while
``on_invalid: keep`` returns the last well-formed plan and leaves it to the critic and the loop
(a step the world cannot do renders as a still scene, the critic rejects it, the loop re-plans).
With the tabletop domain the JSON schema itself lists the domain's verbs, objects and predicate
forms, so servers with constrained decoding cannot produce ill-formed steps at all.
"""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from spiral.llm.client import ChatClient, JsonTask, OutputError, make_client
from spiral.llm.prompts import load_template
from spiral.llm.structured import ChatBackend, complete_json, image_input, text_part
from spiral.options import BackendOptions, merged_model
from spiral.types import Attempt, Instruction, NextStepQuestion, Observation, Plan, StepFailure, SubAction, TaskGoal

log = logging.getLogger("spiral.llm")

TEXT_MAX = 120
RATIONALE_MAX = 300
_SECTIONS = ("system", "plan", "replan", "refine_system", "refine", "repair", "format")


def _str(max_len: int, min_len: int = 1) -> dict[str, Any]:
    return {"type": "string", "minLength": min_len, "maxLength": max_len}


def _tabletop_predicate_pattern() -> str:
    from spiral.world import domain as d

    obj = "(" + "|".join(d.OBJECTS + d.SLOTS) + ")"
    return rf"^(not )?((at|on|in)\({obj}, {obj}\)|(clear|free|open|on)\({obj}\))$"


def _tabletop_variants(conditions: dict[str, Any]) -> list[dict[str, Any]]:
    """One step schema per ground action shape, so a constrained decoder can only write executable verbs/objects."""
    from spiral.world import domain as d

    def step(verb: str, objects: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": False,
                "required": ["text", "verb", "objects", "preconditions", "postconditions"],
                "properties": {"text": _str(TEXT_MAX), "verb": {"type": "string", "enum": [verb]}, "objects": objects,
                               "preconditions": conditions, "postconditions": conditions}}

    def pair(first: list[str], second: list[str]) -> dict[str, Any]:
        return {"type": "array", "minItems": 2, "maxItems": 2,
                "prefixItems": [{"type": "string", "enum": first}, {"type": "string", "enum": second}]}

    def one(obj: str) -> dict[str, Any]:
        return {"type": "array", "minItems": 1, "maxItems": 1, "prefixItems": [{"type": "string", "enum": [obj]}]}

    out = [step("move", pair([b], [x for x in d.LOCATIONS if x != b])) for b in d.BLOCKS]
    out += [step("open", one(d.BOX)), step("close", one(d.BOX)),
            step("switch_on", one(d.LAMP)), step("switch_off", one(d.LAMP))]
    return out


def plan_schema(domain: str | None, max_steps: int, max_conditions: int, min_steps: int = 1) -> dict[str, Any]:
    """The JSON schema of a plan reply; with a domain, steps are limited to its action shapes."""
    cond = {"$ref": "#/$defs/conditions"}
    if domain == "tabletop":
        conditions = {"type": "array", "maxItems": max_conditions,
                      "items": {"type": "string", "pattern": _tabletop_predicate_pattern()}}
        item: dict[str, Any] = {"anyOf": _tabletop_variants(cond)}
    else:
        conditions = {"type": "array", "maxItems": max_conditions, "items": _str(80)}
        item = {"type": "object", "additionalProperties": False,
                "required": ["text", "verb", "objects", "preconditions", "postconditions"],
                "properties": {"text": _str(TEXT_MAX), "verb": _str(40),
                               "objects": {"type": "array", "maxItems": 4, "items": _str(40)},
                               "preconditions": cond, "postconditions": cond}}
    return {"type": "object", "additionalProperties": False, "required": ["rationale", "steps"],
            "properties": {"rationale": _str(RATIONALE_MAX, 0),
                           "steps": {"type": "array", "minItems": min_steps, "maxItems": max_steps, "items": item}},
            "$defs": {"conditions": conditions}}


CHOICE_SCHEMA: dict[str, Any] = {"type": "object", "additionalProperties": False, "required": ["answer"],
                                 "properties": {"answer": {"type": "string", "enum": ["A", "B", "C", "D"]}}}
_CHOICE_SECTIONS = ("system", "question", "repair", "format")
DEFAULT_QUESTION = ("Considering the progress so far and my current observation, what action should I take next in "
                    "order to $goal?")

REFINE_SCHEMA: dict[str, Any] = {"type": "object", "additionalProperties": False, "required": ["text"],
                                 "properties": {"text": _str(2 * TEXT_MAX)}}


def _domain_text(domain: str | None) -> str:
    if domain != "tabletop":
        return "Use short snake_case names for verbs and objects, and the same names inside predicates."
    from spiral.world import domain as d

    return (
        "The world is a tabletop. Use exactly these names.\n"
        f"- verbs: {', '.join(d.VERBS)}; move takes [block, destination], open/close take [box], "
        "switch_on/switch_off take [lamp];\n"
        f"- blocks: {', '.join(d.BLOCKS)}; slots on the table: {', '.join(d.SLOTS)}; also box, lamp;\n"
        "- a destination is a free slot, the top of another block (stacking) or the box (it must be open);\n"
        "- predicates: at(block, slot), on(block, block), in(block, box), clear(block), free(slot), "
        "open(box), on(lamp).\n"
    )


def _describe_state(state: dict[str, Any] | None, domain: str | None) -> str:
    if state is None:
        return "not given as text; read it from the image" if domain else "not given as text"
    if domain == "tabletop":
        try:
            from spiral.world.domain import State, describe

            s = State.from_dict(state)
            return f"{describe(s)}.\nTrue predicates: {', '.join(sorted(s.predicates()))}"
        except ValueError:
            pass
    return json.dumps(state, sort_keys=True, default=str)


def _describe_failures(failed: list[StepFailure] | None, limit: int) -> str:
    """The sub-actions the generator could not make, latest last, for the re-plan request."""
    items = list(failed or [])
    if not items:
        return "none"
    lines = [f"(… {len(items) - limit} earlier failures omitted)"] if len(items) > limit else []
    for f in items[-limit:]:
        s = f.sub_action
        why = ", ".join(x for x in (f.failure, f.feedback) if x)
        tries = f"{f.attempts} attempt{'s' if f.attempts != 1 else ''}"
        lines.append(f"- {s.text} ({s.verb} {', '.join(s.objects)}): {tries}" + (f"; critic: {why}" if why else ""))
    return "\n".join(lines)


def _describe_history(history: list[Any] | None, limit: int) -> str:
    items = list(history or [])
    if not items:
        return "nothing yet"
    lines = []
    if len(items) > limit:
        lines.append(f"(… {len(items) - limit} earlier entries omitted)")
    for h in items[-limit:]:
        if isinstance(h, Attempt):
            v = h.verdict
            note = f"; critic: {v.failure or 'ok'}, {v.feedback}" if v is not None and (v.feedback or v.failure) else ""
            lines.append(f"- step {h.step + 1}, attempt {h.attempt + 1}: \"{h.prompt}\" → {h.decision}{note}")
        elif isinstance(h, SubAction):
            lines.append(f"- done: {h.text}")
        else:
            lines.append(f"- {h}")
    return "\n".join(lines)


class LLMPlannerOptions(BackendOptions):
    """The ``llm`` planner's own options; its transport's (``ChatClient``: base_url, model, ...) come on top."""

    domain: Literal["tabletop"] | None = Field("tabletop", description="tabletop, or null for free-form actions")
    validate_plans: Literal["simulate", "syntax", "off"] = Field(
        "simulate", alias="validate", description="check plans by simulating them in the domain, by syntax, or not")
    on_invalid: Literal["error", "keep"] = Field("error", description="what to do with a plan that stays invalid")
    send_image: bool = Field(True, description="show the model the observed frame")
    image_size: int | None = Field(None, ge=8, description="resize frames to this size before sending")
    max_steps: int = Field(12, ge=1, description="longest plan accepted")
    max_conditions: int = Field(8, ge=0, description="most pre/post-conditions per step")
    refine: Literal["llm", "template"] = Field("llm", description="rewrite a failed step's instruction by the model "
                                                                   "or by a template")
    history_limit: int = Field(16, ge=0, description="executed steps shown when re-planning")
    prompt_version: str = Field("v1", description="prompt template version (spiral/prompts/planner_<v>.md)")
    prompt_file: str | None = Field(None, description="a prompt template file of your own")
    choice_prompt_file: str | None = Field(None, description=(
        "a prompt template of your own for multiple-choice next-step questions (default spiral/prompts/choice_v1.md)"))


class LLMPlanner:
    """PlanAgent over an OpenAI-compatible chat model; validated JSON plans with pre/post-conditions.

    ``backend_class`` (a :class:`spiral.llm.structured.ChatBackend`; ``None`` is the HTTP
    ``ChatClient``) lets a subclass keep the prompts, schemas and checks and change the transport.
    """

    name = "llm"
    backend_class: ClassVar[type | None] = None

    @classmethod
    def options_model(cls) -> type[BaseModel]:
        """The planner's options plus its transport's constructor options (spiral.options)."""
        return merged_model(f"{cls.__name__}Options", LLMPlannerOptions, cls.backend_class or ChatClient)

    def __init__(
        self,
        domain: str | None = "tabletop",
        validate: Literal["simulate", "syntax", "off"] = "simulate",
        on_invalid: Literal["error", "keep"] = "error",
        send_image: bool = True,
        image_size: int | None = None,
        max_steps: int = 12,
        max_conditions: int = 8,
        refine: Literal["llm", "template"] = "llm",
        history_limit: int = 16,
        prompt_version: str = "v2",
        prompt_file: str | None = None,
        choice_prompt_file: str | None = None,
        **client_options: Any,
    ):
        if domain not in (None, "tabletop"):
            raise ValueError(f"planner {self.name}: unknown domain {domain!r}; use 'tabletop' or null (free-form actions)")
        if validate not in ("simulate", "syntax", "off"):
            raise ValueError(f"planner {self.name}: validate must be simulate, syntax or off; got {validate!r}")
        if on_invalid not in ("error", "keep"):
            raise ValueError(f"planner {self.name}: on_invalid must be error or keep; got {on_invalid!r}")
        if refine not in ("llm", "template"):
            raise ValueError(f"planner {self.name}: refine must be llm or template; got {refine!r}")
        if max_steps < 1 or max_conditions < 0:
            raise ValueError(f"planner {self.name}: max_steps must be >= 1 and max_conditions >= 0")
        self.domain, self.validate, self.on_invalid = domain, validate, on_invalid
        self.send_image, self.image_size = send_image, image_size
        self.max_steps, self.max_conditions, self.refine_mode = max_steps, max_conditions, refine
        self.history_limit = history_limit
        self.prompts = load_template("planner", prompt_version, prompt_file, required=_SECTIONS)
        self.choice_prompts = load_template("choice", "v1", choice_prompt_file, required=_CHOICE_SECTIONS)
        self.client: ChatBackend = make_client(f"planner {self.name}", client_options, type(self), self.backend_class)

    def check_health(self) -> None:
        """Whether the endpoint answers (``spiral.agents.ChecksHealth``); a local backend has nothing to check."""
        check = getattr(self.client, "check_health", None)
        if check is not None:
            check(f"planner {self.name}")

    @property
    def prompt_id(self) -> str:
        """Which template (file stem + content hash) produced this planner's prompts."""
        return self.prompts.id

    # -- the PlanAgent protocol ----------------------------------------------------------------

    def plan(self, goal: TaskGoal | str, observation: Observation) -> Plan:
        """A plan for ``goal`` from what is observed (state text and/or first frame)."""
        goal, obs = TaskGoal.of(goal), _as_observation(observation)
        user = self.prompts.render("plan", goal=goal.text, state=_describe_state(obs.state, self.domain),
                                   image_note=self._image_note(obs))
        return self._ask(goal, obs, user, first_id=0, min_steps=1)

    def replan(self, goal: TaskGoal | str, observation: Observation, history: list[SubAction] | list[Attempt] | None = None) -> Plan:
        """A new plan from the observed state, told what happened so far.

        ``history`` is what the loop executed (sub-actions whose segments were kept); attempts with
        their verdicts are accepted too, so the model also sees the critic's feedback.
        """
        return self.replan_avoiding(goal, observation, history, [])

    def replan_avoiding(self, goal: TaskGoal | str, observation: Observation, history: list[SubAction] | list[Attempt] | None,
                        failed: list[StepFailure]) -> Plan:
        """:meth:`replan`, also told which sub-actions the generator could not make and asked to find another way.

        The failures fill the template's ``$failures``; a template without it (v1, or a file of the user's own)
        gets them appended to ``$history``.
        """
        goal, obs = TaskGoal.of(goal), _as_observation(observation)
        hist = list(history or [])
        history_text = _describe_history(hist, self.history_limit)
        failures = _describe_failures(failed, self.history_limit)
        if "$failures" not in self.prompts.raw("replan") and failed:
            history_text += f"\nSteps that failed (find another way if there is one):\n{failures}"
        user = self.prompts.render("replan", goal=goal.text, state=_describe_state(obs.state, self.domain),
                                   image_note=self._image_note(obs), history=history_text, failures=failures)
        return self._ask(goal, obs, user, first_id=len(hist), min_steps=0)

    def refine(self, sub_action: SubAction, feedback: str) -> Instruction:
        """Rewrite a step's instruction from the critic's feedback; the step's text with the feedback beside it in
        ``refine_mode: template`` or when the model fails."""
        if self.refine_mode == "template" or not feedback:
            return Instruction(text=sub_action.text, feedback=feedback)
        action = f"{sub_action.verb}({', '.join(sub_action.objects)})"
        messages = [{"role": "system", "content": self.prompts.render("refine_system")},
                    {"role": "user", "content": self.prompts.render("refine", text=sub_action.text, action=action,
                                                                   feedback=feedback)}]
        task = JsonTask("instruction", REFINE_SCHEMA, _refine_text, self.prompts.raw("repair"),
                        self.prompts.raw("format"))
        try:
            return Instruction(text=complete_json(self.client, messages, task))
        except OutputError as e:
            log.warning("planner %s: refine fell back to the template rewriter (%s)", self.name, e)
            return Instruction(text=sub_action.text, feedback=feedback)

    def choose(self, question: NextStepQuestion) -> int:
        """Answer a multiple-choice next-step question (the ``ChoosesNextStep`` capability): the candidates in the
        prompt, the current frame as an image (``send_image``), the reply a letter constrained by the schema."""
        from string import Template

        letters = "ABCD"
        goal = question.goal.strip().rstrip(".")
        asked = question.question.strip() or Template(DEFAULT_QUESTION).substitute(goal=goal[:1].lower() + goal[1:])
        done = "\n".join(f"- {p}" for p in question.progress[-self.history_limit:]) if question.progress else "nothing yet"
        seen = []
        if question.state is not None:
            seen.append(f"Observed scene: {_describe_state(question.state, self.domain)}")
        if self.send_image and question.frame is not None:
            seen.append("The image shows the current observation.")
        user = self.choice_prompts.render("question", question=asked, goal=question.goal, progress=done,
                                          observation="\n".join(seen),
                                          choices="\n".join(f"{letters[i]}. {c}" for i, c in enumerate(question.choices)))
        content: Any = user
        if self.send_image and question.frame is not None:
            content = [text_part(user), image_input(question.frame, self.image_size)]
        messages = [{"role": "system", "content": self.choice_prompts.render("system")},
                    {"role": "user", "content": content}]
        task = JsonTask("answer", CHOICE_SCHEMA, _choice_index, self.choice_prompts.raw("repair"),
                        self.choice_prompts.raw("format"))
        return complete_json(self.client, messages, task)

    # -- the validate_plan hook ----------------------------------------------------------------

    def validate_plan(self, plan: Plan, observation: Observation, goal: TaskGoal) -> list[str]:
        """Problems that make ``plan`` unusable in the known domain (empty list: fine).

        Override to check plans for a domain of your own; each string is sent back to the model.
        """
        if self.domain != "tabletop" or self.validate == "off":
            return []
        return _tabletop_issues(plan, observation.state if self.validate == "simulate" else None, goal,
                                simulate=self.validate == "simulate")

    # -- internals -----------------------------------------------------------------------------

    def _image_note(self, obs: Observation) -> str:
        return "The image shows the scene now." if self.send_image and obs.frame is not None else ""

    def _messages(self, obs: Observation, user: str) -> list[dict[str, Any]]:
        system = self.prompts.render("system", domain=_domain_text(self.domain), max_steps=self.max_steps)
        content: Any = user
        if self.send_image and obs.frame is not None:
            content = [text_part(user), image_input(obs.frame, self.image_size)]
        return [{"role": "system", "content": system}, {"role": "user", "content": content}]

    def _ask(self, goal: TaskGoal, obs: Observation, user: str, first_id: int, min_steps: int) -> Plan:
        syntax_ok: list[Plan] = []
        problems: list[str] = []

        def validate(data: Any) -> Plan:
            plan = _to_plan(data, goal.text, first_id)
            issues = self.validate_plan(plan, obs, goal)
            hard = [i for i in issues if not i.startswith(_SOFT)]
            if hard:
                raise ValueError("; ".join(hard))
            if issues:
                syntax_ok.append(plan)
                problems[:] = issues
                raise ValueError("; ".join(i[len(_SOFT):] for i in issues))
            return plan

        schema = plan_schema(self.domain, self.max_steps, self.max_conditions, min_steps)
        task = JsonTask("plan", schema, validate, self.prompts.raw("repair"), self.prompts.raw("format"))
        try:
            return complete_json(self.client, self._messages(obs, user), task)
        except OutputError:
            if self.on_invalid == "keep" and syntax_ok:
                plan = syntax_ok[-1]
                why = "; ".join(p[len(_SOFT):] for p in problems)
                log.warning("planner %s: keeping a plan that failed the domain check (%s)", self.name, why)
                return plan.model_copy(update={"rationale": f"{plan.rationale} [unverified: {why}]".strip()})
            raise


_SOFT = "simulate: "


def _as_observation(observation: Any) -> Observation:
    if isinstance(observation, Observation):
        return observation
    if isinstance(observation, dict) and ("frame" in observation or "state" in observation):
        return Observation(**observation)
    if isinstance(observation, dict):
        return Observation(state=observation)
    raise ValueError("planner llm needs an Observation (frame and/or state)")


def _to_plan(data: Any, goal: str, first_id: int) -> Plan:
    """The reply as a Plan; pydantic reports anything malformed (extra keys included)."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object with 'rationale' and 'steps', got {type(data).__name__}")
    steps = data.get("steps")
    if not isinstance(steps, list):
        raise ValueError("'steps' must be a list of step objects")
    extra = sorted(set(data) - {"rationale", "steps"})
    if extra:
        raise ValueError(f"unexpected keys {extra}; the object has only 'rationale' and 'steps'")
    out = []
    for i, s in enumerate(steps):
        if not isinstance(s, dict):
            raise ValueError(f"steps[{i}] must be an object")
        sub = SubAction.model_validate({**s, "id": first_id + i})
        if not sub.text.strip() or not sub.verb.strip():
            raise ValueError(f"steps[{i}] needs a non-empty text and verb")
        out.append(sub)
    return Plan(goal=goal, steps=out, rationale=str(data.get("rationale") or ""))


def _choice_index(data: Any) -> int:
    letter = data.get("answer") if isinstance(data, dict) else None
    if not isinstance(letter, str) or letter.strip().upper() not in ("A", "B", "C", "D"):
        raise ValueError('expected {"answer": "A"} with one of the letters A, B, C, D')
    return "ABCD".index(letter.strip().upper())


def _refine_text(data: Any) -> str:
    if not isinstance(data, dict) or not isinstance(data.get("text"), str) or not data["text"].strip():
        raise ValueError("expected {\"text\": \"<the rewritten instruction>\"} with a non-empty text")
    return data["text"].strip()


def _tabletop_issues(plan: Plan, state: dict[str, Any] | None, goal: TaskGoal, simulate: bool) -> list[str]:
    """Syntax problems (hard) and, when simulating from a known state, execution problems (soft)."""
    from spiral.world import domain as d

    hard, soft = [], []
    actions = []
    for i, s in enumerate(plan.steps):
        try:
            actions.append(d.Action(s.verb, tuple(s.objects)))
        except d.DomainError as e:
            hard.append(f"step {i + 1} ({s.verb} {s.objects}): {e}")
        for p in (*s.preconditions, *s.postconditions):
            try:
                d.Pred.parse(p)
            except d.DomainError as e:
                hard.append(f"step {i + 1}: {e}")
    if hard or not simulate or state is None:
        return hard
    try:
        cur = d.State.from_dict(state)
    except ValueError:
        return []
    for i, a in enumerate(actions):
        try:
            cur = d.apply(cur, a)
        except d.DomainError as e:
            soft.append(f"step {i + 1} {a}: {e}")
            break
    if not soft:
        from spiral.planners.symbolic import goal_reached

        g = goal.tabletop
        start = d.State.from_dict(state)  # a scene-relative goal ("swap …") is read against the state planned from
        if g is not None and not goal_reached(g, cur, start):
            missing = [p for p in g.final() if not cur.holds(p)] if not g.is_relative else [str(g)]
            soft.append(f"after the last step the goal is not reached: {', '.join(missing)} false")
    return [_SOFT + s for s in soft]
