"""The wire contract: one frozen dataclass per task request and per task reply.

This module is the one place that says what crosses the wire. Every
login-node task takes one request dict and answers one reply dict (wrapped in
``bundle.protocol``'s envelope, which carries the versions and says from
which protocol level each task and field exists). The fields of each are
stated here, once, for both sides:

- the client builds its requests with the ``*Request`` classes and sends them
  with ``Transport.send``, which returns the task's ``*Reply`` object;
- every reply, on every path (``Transport.call`` and ``call_many`` too), is
  checked by its ``*Reply`` class (``check_reply_shape``), so no command can
  skip it; the login node checks its own replies the same way before they
  leave (``login_node.tasks``), so a reply it gets wrong is an error there,
  not bad data here;
- the login node parses and checks every request with the ``*Request`` class,
  and its task functions (``login_node.tasks``) work from that object.

The client trusts nothing that crosses the wire: a login node may run another
gcbundle version, a damaged install, or be hostile. A reply class checks
first every value the client reads (type, range, pattern: ``_validate``) and
raises one ``MalformedReply`` line that names the task and the field::

    the login node sent a status reply without `state` (one of staged, ...)

then ``from_json`` parses each declared field by its kind, and raises one
line that names the task and the field: a ``UsageError`` for a request (the
login node refuses it), a ``RemoteError`` for a reply (the client cannot use
it). A request field also states what its value must mean (its ``rule``: a
run id's pattern, a digest's, a number's range), checked once every field's
kind is, in field order, with the error the login node answers; and what a
request that leaves it out gets (``absent``), which may differ from what one
that sends null gets (status's ``wait`` is 0 when absent; a null ``wait`` is
refused). The task functions read a checked request's attributes only. A
reply keeps the fields it does not declare (``extra``), so a newer login node
can add fields that an older client passes through. The results listing's paths, sizes and
digests are checked file by file in ``bundle.results``, which writes them to
disk.

The launch spec (``LaunchSpec``) is the part of a launch request that the
login node records in the run's ``run.json``: arguments, site profile,
parameters, and what the run resumes.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from bundle.errors import MalformedReply, RemoteError, RunNotFound, UsageError
from bundle.limits import LOG_SLICE_BYTES, RUNS_PAGE, TASK_LIMIT

#: Every state of a run, and those it never leaves (``login_node.state`` writes them).
STATES = ("staged", "queued", "starting", "running", "succeeded", "failed", "cancelled", "lost")
TERMINAL = ("succeeded", "failed", "cancelled", "lost")
#: What a reader reports when ``state.json`` cannot be read (never written).
UNKNOWN = "unknown"
#: Every state a reply may carry: the login node's, and the client's own for runs the
#: login node does not know (``gone``).
REPLY_STATES = (*STATES, UNKNOWN, "gone")

_MISSING: Any = object()
_REPLY_HINT = "the login node's gcbundle may be damaged or of another version: check it with `gcbundle doctor`"

# JSON-ish kinds a field may have, by name: the check and the words for an error.
_KINDS: dict[str, tuple[Any, str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "number": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "bytes": (lambda v: isinstance(v, (bytes, bytearray)), "bytes"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "any": (lambda v: True, "anything"),
}


# -- what a reply's values may be ---------------------------------------------------------
# A reply's ``_validate`` checks every field the client reads (type, range, pattern) before
# it is parsed, and raises one ``MalformedReply`` line that names the task and the field:
#     the login node sent a status reply without `state` (one of staged, ...)

#: A bundle's or an archive's sha256 (``fullmatch``): it names a file in the login node's cache.
DIGEST = re.compile(r"[0-9a-f]{64}")
#: A run id (``fullmatch``): it names a folder under the login node's runs/.
RUN_ID = re.compile(r"[0-9a-f]{12}")
_SHAPE_HINT = ("the login node's gcbundle may be damaged or another version: "
               "check it with `gcbundle doctor --endpoint ENDPOINT`")
_CHECK_STATUS = ("ok", "warn", "fail", "skip", "info")


def _bad(task: str, key: str, what: str, missing: bool) -> MalformedReply:
    how = f"without `{key}` ({what})" if missing else f"whose `{key}` is not {what}"
    return MalformedReply(f"the login node sent a {task} reply {how}", _SHAPE_HINT)


def _is_int(v: Any, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) < 1e15


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_dict(v: Any) -> bool:
    return isinstance(v, dict)


def _get(task: str, data: dict[str, Any], key: str, ok: Callable[[Any], bool], what: str, required: bool = True) -> Any:
    if key not in data or data[key] is None:
        if required:
            raise _bad(task, key, what, True)
        return None
    if not ok(data[key]):
        raise _bad(task, key, what, False)
    return data[key]


def _obj(task: str, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        what = type(data).__name__
        raise MalformedReply(f"the login node sent a {task} reply that is a {what}, not an object", _SHAPE_HINT)
    return data


def _check_state(data: Any, task: str) -> None:
    """A run's state, as ``status``, ``launch``, ``cancel`` and ``results_manifest`` carry it."""
    d = _obj(task, data)

    def error_ok(v: Any) -> bool:
        return isinstance(v, dict) and all(isinstance(v.get(k), (str, type(None))) for k in ("message", "traceback"))

    def counts_ok(v: Any) -> bool:
        return isinstance(v, dict) and all(isinstance(k, str) and _is_int(n) for k, n in v.items())

    _get(task, d, "error", error_ok, "an object of strings", False)
    _get(task, d, "state", lambda v: v in REPLY_STATES, f"one of {', '.join(REPLY_STATES)}")
    for key in ("detail", "hint", "host"):
        _get(task, d, key, _is_str, "a string", False)
    _get(task, d, "pid", _is_int, "a process id", False)
    _get(task, d, "updated", _is_num, "a time", False)
    _get(task, d, "tasks", counts_ok, "an object of counts", False)
    _get(task, d, "scheduler_job_ids", _str_list, "a list of strings", False)
    _get(task, d, "resumed_from", lambda v: isinstance(v, str) and RUN_ID.fullmatch(v) is not None, "a run id", False)
    _get(task, d, "waited", _is_num, "a number of seconds", False)


def _kind_of(value: Any) -> str:
    for name in ("bool", "int", "number", "str", "bytes", "list", "dict"):
        if _KINDS[name][0](value):
            return {"number": "a number", "dict": "an object", "list": "a list"}.get(name, _KINDS[name][1])
    return "null" if value is None else type(value).__name__


#: ``contract_field(absent=AS_NULL)``: a request that leaves the field out reads as if it sent null.
AS_NULL: Any = object()

#: A request field's rule: ``rule(request, name, value, sent)`` raises the error the login node answers
#: if ``value`` does not mean what the field must (``sent`` is the request as it came, for a rule that
#: depends on whether another field was sent).
Rule = Callable[[Any, str, Any, Mapping[str, Any]], None]


def contract_field(kind: str, *, optional: bool = False, default: Any = _MISSING, absent: Any = _MISSING,
                   rule: Rule | None = None) -> Any:
    """A contract field of JSON ``kind``.

    ``optional`` also accepts null; ``default`` makes it not required (and is what a Python
    caller gets who leaves it out: None is not sent). ``absent``: what a request that leaves
    the field out gets instead of ``default`` (``AS_NULL``: it reads as null, and is checked
    as null). ``rule``: what the value must mean, checked on a value that was sent (or read
    as null), not on a default.
    """
    meta = {"kind": kind, "optional": optional, "absent": absent, "rule": rule}
    if default is _MISSING:
        return field(metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


T = TypeVar("T", bound="Contract")


@dataclass(frozen=True, kw_only=True)
class Contract:
    """A request or a reply of one task; subclasses declare their fields with ``contract_field``."""

    task: ClassVar[str] = "?"
    side: ClassVar[str] = "request"
    #: The fields whose rules are checked first, in this order (the order the login node has
    #: always checked them in); the other fields' follow in field order.
    rule_order: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def _fail(cls, message: str) -> Exception:
        if cls.side == "request":
            return UsageError(f"the {cls.task} request {message}", "use the gcbundle client to send tasks")
        return RemoteError(f"the login node sent a {cls.task} reply {message}", _REPLY_HINT)

    @classmethod
    def from_json(cls: type[T], data: Any) -> T:
        """Parse and check ``data``; raise one line naming the task and the field if it does not fit.

        A reply is first checked value by value (``_validate``). Then every field is parsed by
        its kind, and only then each field's rule is checked, in ``rule_order`` (a nested
        contract's rules at its field's place): a request wrong in two ways is refused for the
        one the login node has always named first.
        """
        if cls.side == "reply":
            cls._validate(data)
        obj = cls._parse(data)
        obj._settle(data)
        return obj

    @classmethod
    def _parse(cls: type[T], data: Any) -> T:
        """The object of ``data``'s fields, each checked by its kind only."""
        if not isinstance(data, Mapping):
            raise cls._fail(f"that is {_kind_of(data)}, not an object")
        values: dict[str, Any] = {}
        declared = set()
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            declared.add(f.name)
            kind, optional, absent = f.metadata["kind"], f.metadata["optional"], f.metadata["absent"]
            value = data.get(f.name, _MISSING)
            if value is _MISSING:
                if absent is AS_NULL:
                    value = None
                elif absent is not _MISSING:
                    values[f.name] = absent
                    continue
                elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise cls._fail(f"without `{f.name}`")
                else:
                    continue
            if value is None and optional:
                values[f.name] = None
                continue
            check, words = _KINDS[kind]
            if not check(value):
                raise cls._fail(f"with `{f.name}` that is {_kind_of(value)}, not {words}")
            values[f.name] = cls._nested(f.name, value)
        if any(f.name == "extra" for f in dataclasses.fields(cls)):
            values["extra"] = {k: v for k, v in data.items() if k not in declared}
        return cls(**values)

    def _settle(self, data: Mapping[str, Any]) -> None:
        """Each field's rule, in ``rule_order``, on the values ``data`` sent; then ``_check``."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        for name in (*self.rule_order, *(n for n in fields if n not in self.rule_order)):
            f = fields[name]
            value = getattr(self, f.name)
            if isinstance(value, Contract) and isinstance(data.get(f.name), Mapping):
                value._settle(data[f.name])
                continue
            rule = f.metadata.get("rule")
            if rule is not None and (f.name in data or f.metadata["absent"] is AS_NULL):
                rule(self, f.name, value, data)
        self._check()

    @classmethod
    def _validate(cls, data: Any) -> None:
        """A reply's checks of each value the client reads (type, range, pattern), before it is parsed."""

    @classmethod
    def _nested(cls, name: str, value: Any) -> Any:
        """A field's value as the dataclass holds it (a nested contract parses it here, with
        ``_parse``: its rules are checked at its field's place, by ``_settle``)."""
        return value

    def _check(self) -> None:
        """Checks beyond each field's kind (raise ``self._fail``)."""

    def to_json(self) -> dict[str, Any]:
        """The dict that travels; a field that is None is left out (the other side's default)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra":
                out.update(value)
            elif isinstance(value, (Contract, PruneCriteria)):
                out[f.name] = value.to_json()
            elif value is not None:
                out[f.name] = value
        return out


# -- what a request's values must mean ------------------------------------------------------
# A request field's ``rule`` (``contract_field``) raises the error the login node answers, in
# the words its task functions have always used: clients, scripts and tests compare them.

#: Longest a status task may wait for the run's state to change (``StatusRequest.wait``).
STATUS_WAIT_MAX = 30.0
_RUN_ID_HINT = "run ids are 12 hex digits; `gcbundle list` shows them"


def check_run_id(value: Any) -> str:
    """A run id names a folder on the login node: 12 lowercase hex digits, nothing else.
    The request rule and the login node's own guards (``Home.run``) raise this one error."""
    if not isinstance(value, str) or not RUN_ID.fullmatch(value):
        raise RunNotFound(f"{str(value)[:40]!r} is not a run id", _RUN_ID_HINT)
    return value


def check_digest(value: Any, what: str = "digest") -> str:
    """A bundle's or an archive's sha256, which names a file in the cache; the request
    rules and the cache's own guards raise this one error."""
    if not isinstance(value, str) or not DIGEST.fullmatch(value):
        raise UsageError(f"{what} must be 64 lowercase hex digits")
    return value


def _run_id(req: Any, key: str, value: Any, sent: Mapping[str, Any]) -> None:
    check_run_id(value)


def _run_id_or_none(req: Any, key: str, value: Any, sent: Mapping[str, Any]) -> None:
    if value is not None:
        _run_id(req, key, value, sent)


def _digest(what: str, *, none_ok: bool = False) -> Rule:
    """A digest field (``check_digest``); null allowed where ``none_ok``."""
    def rule(req: Any, key: str, value: Any, sent: Mapping[str, Any]) -> None:
        if value is None and none_ok:
            return
        check_digest(value, what)
    return rule


def _digests(what: str, most: int, each: str) -> Rule:
    """A list of at most ``most`` digests (null: none asked)."""
    def rule(req: Any, key: str, value: Any, sent: Mapping[str, Any]) -> None:
        if value is None:
            return
        if len(value) > most:
            raise UsageError(f"{what} must be a list of at most {most} digests")
        for digest in value:
            _digest(each)(req, key, digest, sent)
    return rule


def _int_in(lo: int = 0, hi: int | None = None) -> Rule:
    """An integer in ``lo..hi`` (no upper bound: ``hi`` None); null is refused like any non-integer."""
    def rule(req: Any, key: str, value: Any, sent: Mapping[str, Any]) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < lo or (hi is not None and value > hi):
            raise UsageError(f"{key} must be an integer in {lo}..{hi if hi is not None else 'inf'}, got {value!r}")
    return rule


def _wait_seconds(req: Any, key: str, value: Any, sent: Mapping[str, Any]) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not 0 <= value <= STATUS_WAIT_MAX:
        raise UsageError(f"wait must be a number of seconds in 0..{STATUS_WAIT_MAX:g}, got {value!r}")


def _true_or_false(message: str) -> Rule:
    """true or false, and null is refused (a field that is ``optional`` only so that this says so)."""
    def rule(req: Any, key: str, value: Any, sent: Mapping[str, Any]) -> None:
        if not isinstance(value, bool):
            raise UsageError(message)
    return rule


def _site_profile(what: str) -> Rule:
    """A site profile as it travels (``Profile.to_spec``), or null: none."""
    def rule(req: Any, key: str, site: Any, sent: Mapping[str, Any]) -> None:
        if site is None:
            return
        profile = isinstance(site, dict) and isinstance(site.get("text"), str)
        if not profile or not isinstance(site.get("name", ""), str):
            raise UsageError(f"{what} must be a site profile object with a `text` string, got {type(site).__name__}",
                             "send it with the gcbundle client")
        params = site.get("params", {})
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            raise UsageError(f"{what}.params must be an object with string keys")
    return rule


def _identifier_keys(req: Any, key: str, value: Any, sent: Mapping[str, Any]) -> None:
    if not all(isinstance(k, str) and k.isidentifier() for k in value):
        raise UsageError("spec.args must be an object whose keys are Python identifiers")


def _string_keys(req: Any, key: str, value: Any, sent: Mapping[str, Any]) -> None:
    if not all(isinstance(k, str) for k in value or {}):
        raise UsageError("spec.params must be an object with string keys")


# -- the launch spec ------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class LaunchSpec(Contract):
    """What a run is asked to be: its arguments, site profile and parameters, and what it resumes.

    The detached driver reads these without the client there to hear about a bad one (a
    string ``site`` once crashed the driver before it could write a final state, leaving a
    run that read as lost), so every field is checked before anything is written, and a
    field this login node does not know is refused. ``inherit``: a resume without new
    arguments or site runs with the earlier run's. Null ``params`` are no parameters.
    """

    task: ClassVar[str] = "launch"
    rule_order: ClassVar[tuple[str, ...]] = ("args", "params", "site", "resumed_from")
    args: dict[str, Any] = contract_field("dict", default={}, rule=_identifier_keys)
    site: dict[str, Any] | None = contract_field("dict", optional=True, default=None, rule=_site_profile("spec.site"))
    params: dict[str, Any] = contract_field("dict", optional=True, default={}, rule=_string_keys)
    resumed_from: str | None = contract_field("str", optional=True, default=None, rule=_run_id_or_none)
    inherit: bool = contract_field("bool", default=False)

    def __post_init__(self) -> None:
        if self.params is None:
            object.__setattr__(self, "params", {})

    @classmethod
    def _fail(cls, message: str) -> Exception:
        return UsageError(f"the launch request's spec {message}", "use the gcbundle client to send tasks")

    def _settle(self, data: Mapping[str, Any]) -> None:
        unknown = set(data) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UsageError(f"spec has unknown fields: {', '.join(sorted(map(str, unknown)))[:120]}",
                             "use a gcbundle client of the login node's version")
        super()._settle(data)

    def to_json(self) -> dict[str, Any]:
        return {"args": dict(self.args), "site": self.site, "params": dict(self.params or {}),
                "resumed_from": self.resumed_from, "inherit": self.inherit}


# -- requests -----------------------------------------------------------------------------
# ``default`` is what the client leaves out (None: not sent); ``absent`` what the login node
# reads for a field a request leaves out, where that differs; ``absent=AS_NULL``: the field
# is needed, and a request without it is refused as one that sent null.

def _archive_of_one_probe(req: Any, key: str, value: Any, sent: Mapping[str, Any]) -> None:
    """The upload whose chunks a probe of one bundle asks about."""
    if value and len(req.digests) == 1:
        _digest("archive_sha256")(req, key, value, sent)


@dataclass(frozen=True, kw_only=True)
class ProbeRequest(Contract):
    task: ClassVar[str] = "probe"
    digests: list[str] = contract_field("list", default=[], rule=_digests("digests", 1000, "digest"))
    archive_sha256: str | None = contract_field("str", optional=True, default=None, rule=_archive_of_one_probe)
    #: Protocol 2: digests the client could make a delta against.
    bases: list[str] | None = contract_field("list", optional=True, default=None, rule=_digests("bases", 64, "base"))


@dataclass(frozen=True, kw_only=True)
class StageRequest(Contract):
    task: ClassVar[str] = "stage"
    digest: str = contract_field("any", default=None, absent=AS_NULL, rule=_digest("digest"))
    archive_sha256: str = contract_field("any", default=None, absent=AS_NULL, rule=_digest("archive_sha256"))
    size: int = contract_field("any", default=None, absent=AS_NULL, rule=_int_in(1))
    index: int = contract_field("any", default=None, absent=AS_NULL, rule=_int_in(0))
    #: The chunk's bytes, checked against the upload's size and chunk count by the cache.
    data: Any = contract_field("any", optional=True, default=None)
    #: Protocol 2: the chunks are of a delta against this cached bundle.
    base: str | None = contract_field("str", optional=True, default=None, rule=_digest("base", none_ok=True))


def _archive_of_inline_bundle(req: Any, key: str, value: Any, sent: Mapping[str, Any]) -> None:
    if req.bundle is not None:
        _digest("archive_sha256")(req, key, value, sent)


@dataclass(frozen=True, kw_only=True)
class LaunchRequest(Contract):
    task: ClassVar[str] = "launch"
    run_id: str = contract_field("any", default=None, absent=AS_NULL, rule=_run_id)
    digest: str = contract_field("any", default=None, absent=AS_NULL, rule=_digest("digest"))
    spec: LaunchSpec = contract_field("dict")
    #: The inline bundle's archive sha256 (checked with ``bundle`` only).
    archive_sha256: str | None = contract_field("any", optional=True, default=None, absent=AS_NULL,
                                                rule=_archive_of_inline_bundle)
    #: The whole bundle archive, when it is small enough to travel inside the launch task.
    bundle: bytes | None = contract_field("bytes", optional=True, default=None)

    @classmethod
    def _nested(cls, name: str, value: Any) -> Any:
        return LaunchSpec._parse(value) if name == "spec" else value


@dataclass(frozen=True, kw_only=True)
class StatusRequest(Contract):
    task: ClassVar[str] = "status"
    run_id: str = contract_field("any", default=None, absent=AS_NULL, rule=_run_id)
    #: Seconds to wait on the login node for the state to change (a long poll); absent: 0, answer at once.
    wait: float = contract_field("any", default=None, absent=0, rule=_wait_seconds)


@dataclass(frozen=True, kw_only=True)
class LogsRequest(Contract):
    task: ClassVar[str] = "logs"
    rule_order: ClassVar[tuple[str, ...]] = ("run_id", "tail", "offset", "max_bytes")
    run_id: str = contract_field("any", default=None, absent=AS_NULL, rule=_run_id)
    name: str = contract_field("str", default="driver")
    offset: int = contract_field("any", default=0, rule=_int_in(0))
    tail: bool = contract_field("bool", optional=True, default=False,
                                rule=_true_or_false("logs takes a string `name` and a boolean `tail`"))
    #: Absent: a whole slice (``LOG_SLICE_BYTES``).
    max_bytes: int = contract_field("any", default=None, absent=LOG_SLICE_BYTES, rule=_int_in(1, LOG_SLICE_BYTES))


def _listing_sha_of_a_page(req: Any, key: str, value: Any, sent: Mapping[str, Any]) -> None:
    """The listing a later page continues (checked for a paged request only)."""
    if "page" in sent and value is not None and not (isinstance(value, str) and DIGEST.fullmatch(value)):
        raise UsageError("manifest_sha256 must be 64 lowercase hex digits")


@dataclass(frozen=True, kw_only=True)
class ResultsManifestRequest(Contract):
    task: ClassVar[str] = "results_manifest"
    rule_order: ClassVar[tuple[str, ...]] = ("run_id", "partial", "manifest_sha256", "page")
    run_id: str = contract_field("any", default=None, absent=AS_NULL, rule=_run_id)
    #: The listing of a run that has not ended (absent: refused until it ends).
    partial: bool = contract_field("any", default=None, absent=False,
                                   rule=_true_or_false("partial must be true or false"))
    #: Protocol 3: the listing in pages, from this file on; later pages name the listing they continue.
    #: Absent: the whole listing in one reply; a null page is refused.
    page: int | None = contract_field("any", default=None, rule=_int_in(0))
    manifest_sha256: str | None = contract_field("any", optional=True, default=None, rule=_listing_sha_of_a_page)


def _string(req: Any, key: str, value: Any, sent: Mapping[str, Any]) -> None:
    if not isinstance(value, str):
        raise UsageError(f"{key} must be a string")


@dataclass(frozen=True, kw_only=True)
class ResultsChunkRequest(Contract):
    task: ClassVar[str] = "results_chunk"
    run_id: str = contract_field("any", default=None, absent=AS_NULL, rule=_run_id)
    #: The listing the chunk is of (the results module says whether it still is the run's).
    manifest_sha256: str = contract_field("any", default=None, absent=AS_NULL, rule=_string)
    index: int = contract_field("any", default=None, absent=AS_NULL, rule=_int_in(0))


@dataclass(frozen=True, kw_only=True)
class CancelRequest(Contract):
    task: ClassVar[str] = "cancel"
    run_id: str = contract_field("any", default=None, absent=AS_NULL, rule=_run_id)
    #: Seconds the driver gets to stop by itself.
    grace: int = contract_field("any", default=30, rule=_int_in(0, 600))


def _run_ids(req: Any, key: str, value: Any, sent: Mapping[str, Any]) -> None:
    if value is None:
        return
    if len(value) > RUNS_PAGE:
        raise UsageError(f"run_ids must be a list of at most {RUNS_PAGE} run ids")
    for run_id in value:
        _run_id(req, key, run_id, sent)


@dataclass(frozen=True, kw_only=True)
class RunsRequest(Contract):
    """Protocol 3: the runs on the login node, ``run_ids`` only, or a page of all after ``after``."""

    task: ClassVar[str] = "runs"
    rule_order: ClassVar[tuple[str, ...]] = ("limit", "after", "run_ids")
    run_ids: list[str] | None = contract_field("list", optional=True, default=None, rule=_run_ids)
    after: str | None = contract_field("any", optional=True, default=None, rule=_run_id_or_none)
    #: Absent: a whole page (``RUNS_PAGE``).
    limit: int = contract_field("any", default=None, absent=RUNS_PAGE, rule=_int_in(1, RUNS_PAGE))


#: Most run ids a client may list as fetched in one prune request.
MAX_FETCHED = 100_000


@dataclass(frozen=True)
class PruneCriteria:
    """What to prune: the prune request's ``prune`` object, built by the client
    (``bundle.prune``) and read by the login node (``login_node.prune``)."""

    older_than: float = 0.0  # seconds since the run ended (a bundle: since it was last used)
    states: tuple[str, ...] = TERMINAL
    fetched: frozenset[str] = frozenset()  # runs whose results the client holds complete
    force: bool = False
    dry_run: bool = False
    bundles: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"older_than": self.older_than, "states": list(self.states), "fetched": sorted(self.fetched),
                "force": self.force, "dry_run": self.dry_run, "bundles": self.bundles}

    @classmethod
    def from_json(cls, data: Any) -> PruneCriteria:
        if not isinstance(data, dict):
            raise UsageError("prune must be an object")
        unknown = set(data) - {"older_than", "states", "fetched", "force", "dry_run", "bundles"}
        if unknown:
            raise UsageError(f"prune has unknown fields: {', '.join(sorted(map(str, unknown)))[:120]}")
        older = data.get("older_than", 0.0)
        if not isinstance(older, (int, float)) or isinstance(older, bool) or not 0 <= older < 1e11:
            raise UsageError(f"prune.older_than must be a number of seconds >= 0, got {older!r}"[:120])
        states = data.get("states", list(TERMINAL))
        if not isinstance(states, list) or not states or not all(s in TERMINAL for s in states):
            raise UsageError(f"prune.states must be a non-empty list of {', '.join(TERMINAL)}")
        fetched = data.get("fetched", [])
        listed = isinstance(fetched, list) and len(fetched) <= MAX_FETCHED
        if not listed or not all(isinstance(r, str) and RUN_ID.fullmatch(r) for r in fetched):
            raise UsageError(f"prune.fetched must be a list of at most {MAX_FETCHED} run ids")
        flags = {k: data.get(k, k == "bundles") for k in ("force", "dry_run", "bundles")}
        if not all(isinstance(v, bool) for v in flags.values()):
            raise UsageError("prune.force, prune.dry_run and prune.bundles must be true or false")
        return cls(float(older), tuple(states), frozenset(fetched), **flags)


@dataclass(frozen=True, kw_only=True)
class PruneRequest(Contract):
    """Protocol 3: remove finished runs and cached bundles by these criteria."""

    task: ClassVar[str] = "prune"
    prune: PruneCriteria = contract_field("any", default=None, absent=AS_NULL)

    @classmethod
    def _nested(cls, name: str, value: Any) -> Any:
        return PruneCriteria.from_json(value)


@dataclass(frozen=True, kw_only=True)
class DoctorRequest(Contract):
    task: ClassVar[str] = "doctor"
    #: A site profile spec (``Profile.to_spec``) to check too.
    site: dict[str, Any] | None = contract_field("dict", optional=True, default=None, rule=_site_profile("site"))
    #: With ``site``: submit one short job per executor that checks a compute node reaches its address.
    probe: bool | None = contract_field("bool", optional=True, default=None)


# -- replies ------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class RunState(Contract):
    """A run's state as the login node reports it (``state.json``, with ``lost`` derived)."""

    task: ClassVar[str] = "status"
    side: ClassVar[str] = "reply"
    state: str = contract_field("str")
    run_id: str | None = contract_field("str", optional=True, default=None)
    updated: float | None = contract_field("number", optional=True, default=None)
    tasks: dict[str, Any] | None = contract_field("dict", optional=True, default=None)
    error: dict[str, Any] | None = contract_field("dict", optional=True, default=None)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _validate(cls, data: Any) -> None:
        _check_state(data, cls.task)

    def _check(self) -> None:
        if self.state not in STATES and self.state != UNKNOWN:
            raise self._fail(f"with the unknown state {self.state[:40]!r}")

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@functools.cache
def _reply_state(cls: type[Contract]) -> type[RunState]:
    """RunState whose errors name ``cls``'s task (a state nested in another reply)."""
    return type(f"{cls.__name__}State", (RunState,), {"task": cls.task,
                                                      "__module__": __name__})  # type: ignore[return-value]


@dataclass(frozen=True, kw_only=True)
class ProbeReply(Contract):
    task: ClassVar[str] = "probe"
    side: ClassVar[str] = "reply"
    cached: list[str] = contract_field("list")
    staged_chunks: list[int] | None = contract_field("list", optional=True, default=None)
    #: Protocol 2: which of the request's ``bases`` the login node holds, and its protocol.
    bases: list[str] | None = contract_field("list", optional=True, default=None)
    protocol: int | None = contract_field("int", optional=True, default=None)

    @classmethod
    def _validate(cls, data: Any) -> None:
        d = _obj("probe", data)
        digests = lambda v: isinstance(v, list) and all(isinstance(x, str) and DIGEST.fullmatch(x) for x in v)  # noqa: E731
        _get("probe", d, "cached", digests, "a list of digests")
        chunks = lambda v: isinstance(v, list) and all(_is_int(i) for i in v)  # noqa: E731
        _get("probe", d, "staged_chunks", chunks, "a list of chunk numbers", False)
        _get("probe", d, "bases", digests, "a list of digests", False)


@dataclass(frozen=True, kw_only=True)
class StageReply(Contract):
    task: ClassVar[str] = "stage"
    side: ClassVar[str] = "reply"
    complete: bool = contract_field("bool")

    @classmethod
    def _validate(cls, data: Any) -> None:
        _get("stage", _obj("stage", data), "complete", _is_bool, "true or false")


@dataclass(frozen=True, kw_only=True)
class LaunchReply(Contract):
    task: ClassVar[str] = "launch"
    side: ClassVar[str] = "reply"
    #: The login node does not have the bundle: stage it and launch again.
    missing_bundle: bool = contract_field("bool", default=False)
    state: RunState | None = contract_field("dict", optional=True, default=None)

    @classmethod
    def _validate(cls, data: Any) -> None:
        d = _obj("launch", data)
        if not _get("launch", d, "missing_bundle", _is_bool, "true or false", False):
            _check_state(_get("launch", d, "state", _is_dict, "an object"), "launch")

    @classmethod
    def _nested(cls, name: str, value: Any) -> Any:
        return _reply_state(cls)._parse(value) if name == "state" else value

    def _check(self) -> None:
        if not self.missing_bundle and self.state is None:
            raise self._fail("without `state`")

    def to_json(self) -> dict[str, Any]:
        if self.missing_bundle:
            return {"missing_bundle": True}
        return {"state": self.state.to_json() if self.state is not None else None}


@dataclass(frozen=True, kw_only=True)
class LogsReply(Contract):
    task: ClassVar[str] = "logs"
    side: ClassVar[str] = "reply"
    data: bytes = contract_field("bytes")
    offset: int = contract_field("int")
    next_offset: int = contract_field("int")
    size: int = contract_field("int")
    state: str | None = contract_field("str", optional=True, default=None)
    logs: list[str] = contract_field("list", default=[])

    @classmethod
    def _validate(cls, data: Any) -> None:
        d = _obj("logs", data)
        chunk = _get("logs", d, "data", lambda v: isinstance(v, (bytes, bytearray)), "bytes")
        offset = _get("logs", d, "offset", _is_int, "a byte offset")
        after = lambda v: _is_int(v) and v == offset + len(chunk)  # noqa: E731
        _get("logs", d, "next_offset", after, "the offset after the bytes sent")
        _get("logs", d, "size", _is_int, "the log's size")
        _get("logs", d, "state", lambda v: v in REPLY_STATES, f"one of {', '.join(REPLY_STATES)}", False)
        _get("logs", d, "logs", _str_list, "a list of log names", False)


@dataclass(frozen=True, kw_only=True)
class ResultsManifestReply(Contract):
    task: ClassVar[str] = "results_manifest"
    side: ClassVar[str] = "reply"
    state: RunState = contract_field("dict")
    files: list[dict[str, Any]] = contract_field("list")
    manifest_sha256: str = contract_field("str")
    chunk_bytes: int = contract_field("int")
    total: int = contract_field("int")
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _validate(cls, data: Any) -> None:
        """The listing (or one page of it); its files are checked in ``bundle.results``, which writes them to disk."""
        t = "results listing"
        d = _obj(t, data)
        _check_state(_get(t, d, "state", _is_dict, "an object"), t)
        _get(t, d, "files", lambda v: isinstance(v, list), "a list")
        _get(t, d, "manifest_sha256", lambda v: isinstance(v, str) and DIGEST.fullmatch(v) is not None, "a sha256")
        _get(t, d, "chunk_bytes", lambda v: _is_int(v, 1) and v <= TASK_LIMIT, f"a size in 1..{TASK_LIMIT}")
        _get(t, d, "total", _is_int, "a byte count")
        _get(t, d, "next_page", lambda v: _is_int(v, 1), "a file number", False)

    @classmethod
    def _nested(cls, name: str, value: Any) -> Any:
        return _reply_state(cls)._parse(value) if name == "state" else value


@dataclass(frozen=True, kw_only=True)
class ResultsChunkReply(Contract):
    task: ClassVar[str] = "results_chunk"
    side: ClassVar[str] = "reply"
    index: int = contract_field("int")
    data: bytes = contract_field("bytes")

    @classmethod
    def _validate(cls, data: Any) -> None:
        t = "results chunk"
        d = _obj(t, data)
        _get(t, d, "index", _is_int, "a chunk number")
        _get(t, d, "data", lambda v: isinstance(v, (bytes, bytearray)), "bytes")


@dataclass(frozen=True, kw_only=True)
class CancelReply(Contract):
    task: ClassVar[str] = "cancel"
    side: ClassVar[str] = "reply"
    state: RunState = contract_field("dict")
    #: The run had already ended: nothing was done.
    already: bool = contract_field("bool", default=False)
    #: Processes that had to be killed (the driver, and what it left).
    escalated: int = contract_field("int", default=0)

    @classmethod
    def _validate(cls, data: Any) -> None:
        d = _obj("cancel", data)
        _check_state(_get("cancel", d, "state", _is_dict, "an object"), "cancel")
        _get("cancel", d, "already", _is_bool, "true or false", False)
        _get("cancel", d, "escalated", _is_int, "a count", False)

    @classmethod
    def _nested(cls, name: str, value: Any) -> Any:
        return _reply_state(cls).from_json(value) if name == "state" else value

    def to_json(self) -> dict[str, Any]:
        if self.already:
            return {"state": self.state.to_json(), "already": True}
        return {"state": self.state.to_json(), "escalated": self.escalated}


@dataclass(frozen=True, kw_only=True)
class DoctorReply(Contract):
    task: ClassVar[str] = "doctor"
    side: ClassVar[str] = "reply"
    checks: list[dict[str, Any]] = contract_field("list")
    versions: dict[str, Any] = contract_field("dict")
    ok: bool = contract_field("bool")
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _validate(cls, data: Any) -> None:
        d = _obj("doctor", data)

        def checks_ok(v: Any) -> bool:
            return isinstance(v, list) and all(
                isinstance(c, dict) and isinstance(c.get("name"), str) and c.get("status") in _CHECK_STATUS
                and isinstance(c.get("detail", ""), str) and isinstance(c.get("fix") or "", str) for c in v)

        def versions_ok(v: Any) -> bool:
            if not isinstance(v, dict):
                return False
            return all(isinstance(k, str) and isinstance(x, (str, type(None))) for k, x in v.items())

        for key in ("driver_versions", "worker_versions"):
            _get("doctor", d, key, versions_ok, "an object of version strings", False)
        for key in ("host", "user", "home", "site", "python"):
            _get("doctor", d, key, _is_str, "a string", False)
        _get("doctor", d, "checks", checks_ok, f"a list of checks (name, status in {'/'.join(_CHECK_STATUS)}, detail)")
        _get("doctor", d, "versions", versions_ok, "an object of version strings", False)


@dataclass(frozen=True, kw_only=True)
class RunsReply(Contract):
    task: ClassVar[str] = "runs"
    side: ClassVar[str] = "reply"
    runs: list[dict[str, Any]] = contract_field("list")
    #: The run id to ask ``after`` for the next page, or None at the end.
    next: str | None = contract_field("str", optional=True, default=None)

    @classmethod
    def _validate(cls, data: Any) -> None:
        d = _obj("runs", data)

        def run_id_ok(v: Any) -> bool:
            return isinstance(v, str) and RUN_ID.fullmatch(v) is not None

        def entry_ok(e: Any) -> bool:
            if not isinstance(e, dict):
                return False
            strings, times = ("digest", "entry", "site", "detail"), ("submitted", "updated")
            return (run_id_ok(e.get("run_id")) and e.get("state") in REPLY_STATES
                    and all(e.get(k) is None or isinstance(e[k], str) for k in strings)
                    and (e.get("resumed_from") is None or run_id_ok(e["resumed_from"]))
                    and all(e.get(k) is None or (_is_num(e[k]) and 0 <= e[k] < 1e11) for k in times))

        entries_ok = lambda v: isinstance(v, list) and all(entry_ok(e) for e in v)  # noqa: E731
        _get("runs", d, "runs", entries_ok, "a list of runs (id, state, ...)")
        _get("runs", d, "next", run_id_ok, "a run id", False)

    def to_json(self) -> dict[str, Any]:
        return {"runs": self.runs, "next": self.next}


@dataclass(frozen=True, kw_only=True)
class PruneReply(Contract):
    task: ClassVar[str] = "prune"
    side: ClassVar[str] = "reply"
    runs: list[dict[str, Any]] = contract_field("list")
    bundles: list[dict[str, Any]] = contract_field("list")
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _validate(cls, data: Any) -> None:
        d = _obj("prune", data)

        def rows(key: str, ident: str, pattern: re.Pattern[str]) -> None:
            _get("prune", d, key, lambda v: isinstance(v, list) and all(
                isinstance(r, dict) and isinstance(r.get(ident), str) and pattern.fullmatch(r[ident]) is not None
                and isinstance(r.get("action"), str) for r in v), f"a list of {ident} rows", False)

        rows("runs", "run_id", RUN_ID)
        rows("bundles", "digest", DIGEST)
        _get("prune", d, "freed_bytes", _is_int, "a byte count")


#: Task name -> (request class, reply class). The status reply is the run's state itself.
CONTRACTS: dict[str, tuple[type[Contract], type[Contract]]] = {
    "probe": (ProbeRequest, ProbeReply),
    "stage": (StageRequest, StageReply),
    "launch": (LaunchRequest, LaunchReply),
    "status": (StatusRequest, RunState),
    "logs": (LogsRequest, LogsReply),
    "results_manifest": (ResultsManifestRequest, ResultsManifestReply),
    "results_chunk": (ResultsChunkRequest, ResultsChunkReply),
    "cancel": (CancelRequest, CancelReply),
    "doctor": (DoctorRequest, DoctorReply),
    "runs": (RunsRequest, RunsReply),
    "prune": (PruneRequest, PruneReply),
}


def check_reply(task: str, data: Any) -> Contract:
    """The reply of ``task``, checked and parsed into its reply object."""
    return parse_reply(task, check_reply_shape(task, data))


def parse_reply(task: str, data: Any) -> Contract:
    """The reply of ``task``, already passed by ``check_reply_shape`` (as ``Transport.call``
    does), parsed into its reply object: its values are not checked a second time."""
    obj = CONTRACTS[task][1]._parse(data)
    obj._settle(data)
    return obj


def check_reply_shape(task: str, data: Any) -> Any:
    """``data`` if every value the client reads in ``task``'s reply fits (``_validate``); a ``MalformedReply``
    otherwise.

    Every reply passes here (``Transport.call``, and the login node before its reply
    leaves); the callers that keep working on the reply's dict get it back unchanged.
    """
    CONTRACTS[task][1]._validate(data)
    return data


def parse_request(task: str, data: Any) -> Contract:
    """The request of ``task``, parsed and checked (login-node side)."""
    return CONTRACTS[task][0].from_json(data)
