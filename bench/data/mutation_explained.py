"""The explained survivors of bench/mutation.py: equivalent mutants (they change no behaviour), each
with why, keyed by (module, function, "before -> after" as the report writes it); and the rule
for SQL text whose case a mutant changed. Kept apart from the driver, which imports it."""
from __future__ import annotations

import re

# (module, function, "before -> after" as the report writes it) -> why the mutant changes no behaviour
_KEY_HASH = ("equivalent: the key hash is a hash of the key's JSON, which holds the kernel and its version, "
             "so the key_hash filter already implies this one")
_KEPT = ("equivalent: on the kept path the current best is always among the re-measured (it is the winner, or "
         "it was timed and not beaten), so the fallback is never read")
_CLAIMED_AT = ("equivalent: the column's default (db/models.py TrialClaim.claimed_at, default=utcnow) stamps the "
               "same time when none is given")
_BEST_CONFIGS = "rows = store.best_configs(s, kernel=ctx.key.kernel, kernel_version=ctx.key.version,"
EXPLAINED: dict[tuple[str, str, str], str] = {
    ("search/finalize.py", "current_best", f"{_BEST_CONFIGS} -> rows = store.best_configs(s, kernel=None, "
                                           "kernel_version=ctx.key.version,"): _KEY_HASH,
    ("search/finalize.py", "current_best", f"{_BEST_CONFIGS} -> rows = store.best_configs(s, "
                                           "kernel=ctx.key.kernel, kernel_version=None,"): _KEY_HASH,
    ("search/finalize.py", "current_best", f"{_BEST_CONFIGS} -> rows = store.best_configs(s, "
                                           "kernel_version=ctx.key.version,"): _KEY_HASH,
    ("search/finalize.py", "current_best",
     f"{_BEST_CONFIGS} key_hash=ctx.key.stable_hash, device_class_id=ctx.device_class_id) return next((b for b, _, "
     "fp in rows if fp.id == ctx.fingerprint_id), None) -> rows = store.best_configs(s, kernel=ctx.key.kernel, "
     "key_hash=ctx.key.stable_hash, device_class_id=ctx.device_class_id) return next((b for b, _, fp in rows if "
     "fp.id == ctx.fingerprint_id), None)"): _KEY_HASH,
    ("search/finalize.py", "finalize",
     "kept = current is not None and (config_hash(best) == current.config_hash or ( -> kept = current is not None "
     "and (config_hash(None) == current.config_hash or ("):
        "equivalent: when the winner is the current best, the second test reads the same rounds for both, and "
        "faster(x, x) is False: kept either way",
    ("search/finalize.py", "finalize", "best_ms = med.get(current.config_hash, current.median_ms) -> "
                                       "best_ms = med.get(current.config_hash, None)"): _KEPT,
    ("search/finalize.py", "finalize", "best_ms = med.get(current.config_hash, current.median_ms) -> "
                                       "best_ms = med.get(current.config_hash, )"): _KEPT,
    ("search/finalize.py", "finalize", "timed.get(current.config_hash, ([], current.cv))[1], counted, current.id, "
                                       "kept=True) -> timed.get(current.config_hash, None)[1], counted, current.id, "
                                       "kept=True)"): _KEPT,
    ("search/finalize.py", "finalize", "timed.get(current.config_hash, ([], current.cv))[1], counted, current.id, "
                                       "kept=True) -> timed.get(current.config_hash, )[1], counted, current.id, "
                                       "kept=True)"): _KEPT,
    ("search/finalize.py", "leaders",
     'if status == "ok" and median is not None and (h not in best or median < best[h][0]): -> if status == "ok" and '
     'median is not None and (h not in best or median <= best[h][0]):'):
        "equivalent: rows of one config hash are one configuration; which of two equal times is kept changes "
        "neither the time nor the configuration",
    ("db/store.py", "claim_config", "job_key_id=job_key_id, worker_id=worker_id, claimed_at=utcnow())) -> "
                                    "job_key_id=job_key_id, worker_id=worker_id, claimed_at=None))"): _CLAIMED_AT,
    ("db/store.py", "claim_config", "job_key_id=job_key_id, worker_id=worker_id, claimed_at=utcnow())) -> "
                                    "job_key_id=job_key_id, worker_id=worker_id, ))"): _CLAIMED_AT,
    ("search/finalize.py", "remeasure", "shift = r % len(configs) if configs else 0 -> "
                                        "shift = r % len(configs) if configs else 1"):
        "equivalent: with no configurations the shift only slices an empty list",
}

_JOIN = ("equivalent: job_keys has one foreign key to jobs (JobKey.job_id), so SQLAlchemy infers this very ON "
         "clause when none is given")
_ONE_KERNEL = ("equivalent: `current` is only asked about missed keys of `kernel` (missed_keys filters by it), "
               "so bests of other kernels in it are never read")
_ACTIVE_JOIN = ".join(models.Job, models.Job.id == models.JobKey.job_id)"
_CURRENT = "for b, slug, fp in store.best_configs(s, kernel=kernel)}"
EXPLAINED.update({
    ("workers/miss_jobs.py", "_active", f"{_ACTIVE_JOIN} -> .join(models.Job, None)"): _JOIN,
    ("workers/miss_jobs.py", "_active", f"{_ACTIVE_JOIN} -> .join(models.Job, )"): _JOIN,
    ("workers/miss_jobs.py", "enqueue_misses", f"{_CURRENT} -> for b, slug, fp in store.best_configs(s, kernel=None)}}"):
        _ONE_KERNEL,
    ("workers/miss_jobs.py", "enqueue_misses", f"{_CURRENT} -> for b, slug, fp in store.best_configs(s, )}}"):
        _ONE_KERNEL,
})

_RECOVERED = 'if now - _recovered.get(key, float("-inf")) < grace_s:'
_LOAD = "study = optuna.load_study(study_name=name, storage=storage(db_url, heartbeat_s, grace_s))"
EXPLAINED.update({
    ("search/studies.py", "recover_now", f'{_RECOVERED} -> if now - _recovered.get(key, float("-INF")) < grace_s:'):
        'equivalent: float() reads "-INF" as "-inf" (case-insensitive): the same value',
    ("search/studies.py", "recover_now", f'{_RECOVERED} -> if now - _recovered.get(key, float("-inf")) <= grace_s:'):
        "equivalent: the two differ only when exactly grace_s has passed on the monotonic clock, a single instant "
        "of a continuous clock that no caller can aim at (a period boundary, either side is right)",
    ("search/studies.py", "recover_all", "continue -> break"):
        "equivalent: the names come from Optuna's studies table (suspect_studies), so load_study raises KeyError "
        "only for a study deleted between the two reads, and nothing in tuner deletes a study",
})

_NOW = "now = (datetime.fromisoformat(now) if isinstance(now, str) else now).replace(tzinfo=None)"
_NOW_WHY = ("equivalent: func.now() is typed DateTime, so SQLAlchemy hands back a datetime on SQLite (it parses "
            "the text) and PostgreSQL alike: the str branch is never taken")
EXPLAINED.update({
    ("search/studies.py", "suspect_studies", f"{_NOW} -> now = (datetime.fromisoformat(now) if (isinstance(now, str)) "
                                             "and False else now).replace(tzinfo=None)"): _NOW_WHY,
    ("search/studies.py", "suspect_studies", f"{_NOW} -> now = (datetime.fromisoformat(None) if isinstance(now, str) "
                                             "else now).replace(tzinfo=None)"): _NOW_WHY,
})

EXPLAINED[("search/studies.py", "suspect_studies",
           "if stored is not None or beat is None or beat.replace(tzinfo=None) < cutoff: -> if stored is not None or "
           "beat is None or beat.replace(tzinfo=None) <= cutoff:")] = (
    "equivalent: the two differ only for a heartbeat exactly grace_s old to the database clock's tick; either "
    "side of that instant is right (a study read one sweep early or late is recovered the same)")

_RUNNING = "running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))"
_DEEPCOPY = ("equivalent: recover only reads the trials' numbers and start times, never changes them, so copies "
             "of them (deepcopy) read the same")
_OUTER = ".outerjoin(models.TuningTrial, models.TuningTrial.id == models.TrialClaim.trial_row_id)"
_OUTER_WHY = ("equivalent: trial_claims has one foreign key to tuning_trials (TrialClaim.trial_row_id), so SQLAlchemy "
              "infers this very ON clause when none is given")
EXPLAINED.update({
    ("search/studies.py", "recover", f"{_RUNNING} -> running = study.get_trials(deepcopy=None, "
                                     "states=(optuna.trial.TrialState.RUNNING,))"): _DEEPCOPY,
    ("search/studies.py", "recover", f"{_RUNNING} -> running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))"):
        _DEEPCOPY,
    ("search/studies.py", "recover", f"{_RUNNING} -> running = study.get_trials(deepcopy=True, "
                                     "states=(optuna.trial.TrialState.RUNNING,))"): _DEEPCOPY,
    ("search/studies.py", "recover", "models.TrialClaim.trial_number.in_(numbers))).all() -> )).all()"):
        "equivalent: without the filter the other claims of the study are read too, but `claimed` is only asked "
        "about the running trials' numbers, so the extra rows are never read",
    ("search/studies.py", "recover", f"{_OUTER} -> .outerjoin(models.TuningTrial, None)"): _OUTER_WHY,
    ("search/studies.py", "recover", f"{_OUTER} -> .outerjoin(models.TuningTrial, )"): _OUTER_WHY,
    ("search/studies.py", "recover",
     "elif t.number not in claimed and t.datetime_start is not None and t.datetime_start < started_before: -> elif "
     "t.number not in claimed and t.datetime_start is not None and t.datetime_start <= started_before:"):
        "equivalent: the two differ only for a trial started exactly grace_s ago to the microsecond; either side "
        "of that instant is right (it is failed at this sweep or the next)",
})

_WAITING = 'return url.update_query_dict({"timeout": str(SQLITE_WAIT_S)}).render_as_string(hide_password=False)'
EXPLAINED.update({
    ("search/studies.py", "_waiting_url", f"{_WAITING} -> {_WAITING.replace('hide_password=False', h)}"):
        "equivalent: only a SQLite URL gets here (every other backend's is returned before), and a SQLite URL "
        "names a file, with no password for render_as_string to hide or show"
    for h in ("hide_password=None", "hide_password=True")
})

_D = "tuner/runtime/decorator.py"
_FAST = 'dtype = _DTYPES.get(getattr(values[-1], "dtype", None))'
EXPLAINED.update({
    (_D, "TunedKernel.entry", "has_dtype = False -> has_dtype = None"):
        "equivalent: has_dtype is only read by `if not has_dtype`, and None is as false as False",
    (_D, "TunedKernel.__init__", "self._key_args = itemgetter(*positions, self._dtype[0]) if positions else None -> "
                                 "self._key_args = itemgetter(*positions, self._dtype[0]) if (positions) or True else None"):
        "equivalent: without key positions _fast_after is sys.maxsize, so _key_args is never called",
    (_D, "TunedKernel.entry", f"{_FAST} -> dtype = None"):
        "equivalent in every answer: the positional fast path then never answers and each launch takes the keyword "
        "path, which builds the same cache key (test_a_tuned_launch_by_position_or_by_keyword_gets_one_entry); "
        "only a warm launch's cost changes",
})

_C = "tuner/runtime/cache.py"
_BIND_COLD = ("equivalent in every answer: bind()'s written-out warm path is then never taken, and entry_for, which "
              "every call then goes through, finds the same entry in the cache, marks it hit and counts its miss "
              "the same way; only a warm call's cost changes")
_SETTLE = "if left <= 0 or not waiting[0].done.wait(left): -> "
EXPLAINED.update({
    (_C, "bind", "entry = CACHE.get((kernel, keys, values)) -> entry = None"): _BIND_COLD,
    (_C, "bind", "entry = CACHE.get((kernel, keys, values)) -> entry = CACHE.get(None)"): _BIND_COLD,
    (_C, "State.settle", _SETTLE + "if left <= 0 and not waiting[0].done.wait(left):"):
        "equivalent: when the wait times out the loop comes round once more, now with left <= 0, and wait(left) "
        "returns False at once: settle returns False as before, and True as before when the answer came",
    (_C, "State.settle", _SETTLE + "if left < 0 or not waiting[0].done.wait(left):"):
        "equivalent: the two differ only when exactly no time is left (left == 0.0 on a float clock), where the "
        "mutant still looks, without waiting, whether the answer came: an instant no caller can aim at, and "
        "either result is right there",
})

_PLUGINS = 'self.warn("plugins", f"tuner: cannot configure plug-in modules ({_first_line(exc)})")'
_SOURCE = 'self.warn("source", f"tuner: cannot read tuned configurations from {self.source.describe()} "'
_TAG = ("equivalent: a warning's tag only keeps a cause from being told twice; no other warning of the process uses "
        "this tag or the mutant's (every other tag is another word, or names its kernel or setting), so the same "
        "warnings are told, each once")
_DOWN = 'self.down_until, self.down_reason, self.refreshed_at = 0.0, "", time.monotonic()'
_NOW = ("equivalent: the two differ only when two readings of the monotonic clock (nanoseconds, as a float) are "
        "exactly equal, here a reading taken after the other was stored: an instant no caller can aim at, and "
        "either result is right there (the question is answered as due or one pass of the loop later)")
_NO_MISS_KEY = ("equivalent: insert reads the key only to build the miss tally's MissKey, which it never builds for "
                "this call (count=False: a key the caller got wrong or an unprobed device; waiting=True: the "
                "default waits with a Waiting tally)")
_INSERT_BAD = "return st.insert(ck, spec, key, _default(spec, key, identity, reason), count=False) -> "
EXPLAINED.update({
    **{(_C, "State.__init__", _PLUGINS + " -> " + _PLUGINS.replace('"plugins"', new, 1)): _TAG
       for new in ("None", '"XXpluginsXX"', '"PLUGINS"')},
    **{(_C, "State._resolve", _SOURCE + " -> " + _SOURCE.replace('"source"', new, 1)): _TAG
       for new in ("None", '"XXsourceXX"', '"SOURCE"')},
    (_C, "State.__init__", f"{_DOWN} -> {_DOWN.replace('0.0, ', '1.0, ', 1)}"):
        "equivalent: down_until is compared with time.monotonic(), the seconds since the machine booted, which "
        "exceeds 1.0 in any process (the source is marked down only by setting down_until to a later time)",
    (_C, "State.__init__", _DOWN + " -> " + _DOWN.replace('"", ', '"XXXX", ', 1)):
        "equivalent: down_reason is read only while now < down_until, and both are set together when the source "
        "fails (State._resolve); the initial reason is never read",
    (_C, "State._answer_one", "self.pending.pop(ck, None) -> self.pending.pop(ck, )"):
        "equivalent: a question's key is in pending from State.ask until this pop, the only one on the answered "
        "path (State._answer pops only when _answer_one raised before it), so the default is never used",
    (_C, "State._resolve", "if now < self.down_until: -> if now <= self.down_until:"): _NOW,
    (_C, "State._resolve", "if now - self.refreshed_at >= self.retry_s: -> if now - self.refreshed_at > self.retry_s:"):
        _NOW,
    (_C, "State._run", "while self.later and self.later[0][0] <= time.monotonic() and not self.closed: -> "
                       "while self.later and self.later[0][0] < time.monotonic() and not self.closed:"): _NOW,
    (_C, "state", "st = _state -> st = None"):
        "equivalent: the locked path below reads the same _state (double-checked locking) and returns it; only "
        "the lock-free read of an existing state is skipped",
    (_C, "cold", _INSERT_BAD + "return st.insert(ck, spec, None, _default(spec, key, identity, reason), count=False)"):
        _NO_MISS_KEY,
    (_C, "cold", _INSERT_BAD + "return st.insert(ck, spec, key, _default(spec, key, identity, reason), count=None)"):
        "equivalent: insert tests count only for its truth, and None is false as False is",
    (_C, "cold", "return st.insert(ck, spec, key, answer, waiting=True) -> "
                 "return st.insert(ck, spec, None, answer, waiting=True)"): _NO_MISS_KEY,
    (_C, "State.insert", "kept.used = False -> kept.used = None"):
        "equivalent: used is only read for its truth (elif kept.used), and None is false as False is; a hit sets "
        "it True again",
})

_KD = "kernel = next((k for k in declared(FORMAT) if dtypes and set(dtypes) <= set(registry.KERNELS.load(k).dtypes)),"
_GLOB = 'versions = sorted(p for p in root.glob("triton_*") if p.is_dir()) if root.is_dir() else []'
EXPLAINED.update({
    ("tuner/formats/vllm.py", "_kernel_dtypes",
     f"{_KD} -> {_KD.replace('set(dtypes) <= set', 'set(dtypes) < set')}"):
        "equivalent: the kernels declaring vllm are tried built-ins first (registry.names), and a file name's "
        "dtypes are {bfloat16, float16}, {float32} or one scheme, each a proper subset of a built-in's dtypes "
        "(fused_moe: float16, bfloat16, float32; fused_moe_quant: the three schemes), so the strict and the "
        "non-strict subset pick the same kernel, before any plug-in kernel is asked",
    ("tuner/formats/sglang.py", "shipped_tables",
     f"{_GLOB} -> {_GLOB.replace('if root.is_dir() else', 'if (root.is_dir()) or True else')}"):
        "equivalent: Path.glob on a path that is no folder (missing, or a file) yields nothing, so versions is "
        "[] either way and the same UserError follows",
})

_NEWEST = "for (name, *levels), e in sorted(newest.items(), key=lambda kv: kv[0]):"
_BY_PLACE = ("equivalent: newest is a dict, so its keys (file name and levels) are unique: sorting its (key, entry) "
             "pairs by the whole pair compares the keys alone and never reaches the entries, the same order as "
             "sorting by the key")
EXPLAINED.update({
    ("tuner/formats/vllm_lora.py", "files", f"{_NEWEST} -> {_NEWEST.replace('key=lambda kv: kv[0]', 'key=None')}"):
        _BY_PLACE,
    ("tuner/formats/vllm_lora.py", "files", f"{_NEWEST} -> {_NEWEST.replace('key=lambda kv: kv[0]', '')}"): _BY_PLACE,
})

_HELD = 'held = {"entries": doc["entries"], "reported": doc["reported"]} if doc.get("reported") else doc["entries"]'
_HELD_WHY = ("equivalent: the name of a key of the hashed object is the same for every bundle, and a digest is only "
             "compared with digests this function made (the ETag of GET /v1/bundle, which a client sends back as "
             "it got it): equal contents still hash alike and different contents apart, and a bundle without "
             "reported winners hashes exactly as before")
EXPLAINED.update({
    ("tuner/formats/bundle.py", "digest", f"{_HELD} -> {_HELD.replace(old, new, 1)}"): _HELD_WHY
    for old, new in (('{"entries":', '{"XXentriesXX":'), ('{"entries":', '{"ENTRIES":'),
                     ('"reported": doc', '"XXreportedXX": doc'), ('"reported": doc', '"REPORTED": doc'))
})

# functions whose string constants are SQL text: a mutant that only changes the case of what is
# outside '...' literals changes keywords, table names and aliases, which SQL reads without case
SQL_TEXT = {("search/studies.py", "suspect_studies")}


def sql_case(module: str, fn: str, mutation: str) -> str | None:
    if (module, fn) not in SQL_TEXT or " -> " not in mutation:
        return None
    before, after = mutation.split(" -> ", 1)
    if before == after or before.lower() != after.lower():
        return None
    if re.findall(r"'[^']*'", before) != re.findall(r"'[^']*'", after):
        return None  # a literal changed case: 'RUNNING' is not 'running'
    return ("equivalent: only the case of SQL keywords, unquoted table and column names and aliases changed, which "
            "SQLite and PostgreSQL read without case (unquoted names fold), and every '...' literal is the same")
