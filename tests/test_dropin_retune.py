"""A drop-in kernel's stale best, retuned after a stack change (workers/stale_jobs.py) on the real
PostgreSQL: a best row's key carries no launch signature, so the retune job takes the key's newest
recorded one (store.launch_signatures), and a key with none recorded is skipped with the reason,
never queued for every trial to crash on inputs it cannot rebuild."""
import pytest

from db import models, store
from db.clock import utcnow
from db.session import session_scope
from search_spaces import registry
from search_spaces.dropin import config_dict
from tests.kernels import dropin as kernels
from tests.rows import best, identity, live_worker, schema, stack
from tests.services import pg_database
from tuner.runtime.miss_tally import MissKey, parse_record, record
from workers.stale_jobs import enqueue_stale

pytestmark = pytest.mark.integration
SLUG = "h100-sxm-80gb"


@pytest.fixture
def url():
    with pg_database() as url:
        yield schema(url)


def _signature(n: int, rows: int) -> dict:
    return {"args": {"X": {"shape": [rows, n], "strides": [n, 1], "dtype": "float32"},
                     "N": {"value": n}, "eps": {"value": 1e-5}}, "grid": [rows]}


def _miss(url: str, n: int, signature: dict | None, driver: str = "999.1", count: int = 3) -> None:
    spec = registry.get(kernels.LAYER_NORM)
    key = spec.make_key({"N": n}, "float32")
    now = utcnow().isoformat()
    rec = record(MissKey(spec.name, spec.version, key.stable_hash, (("N", n),), "float32", SLUG,
                         stack(driver)["hash"], "default"), count, now, now, signature)
    with session_scope(url) as s:
        store.record_misses(s, [parse_record(rec)])


def _stale(url: str, *dims: int) -> None:
    """Bests of the layer norm under driver 555.1, and a live worker of the class on 999.1."""
    config = config_dict(kernels._layer_norm_fwd_fused.configs[0])
    for n in dims:
        best(url, SLUG, {"N": n}, 0.1, kernel=kernels.LAYER_NORM, dtype="float32", config=config)
    live_worker(url, "new-driver", SLUG, driver="999.1")


def _retune(url: str) -> tuple[dict, list]:
    sent = []
    result = enqueue_stale(url, sent.append, holder="test", dead_after_s=60, budget_fraction=0.5,
                           kernel=kernels.LAYER_NORM, batch_trials=2, parallel=1)
    return result, sent


def test_a_stale_drop_in_key_is_retuned_with_its_newest_recorded_launch(url):
    _stale(url, 200)
    _miss(url, 200, _signature(200, 6), driver="555.1")
    newer = _signature(200, 9)
    with session_scope(url) as s:  # a later tune's job key carries a later launch: the newest wins
        identity(s, SLUG)
        spec = registry.get(kernels.LAYER_NORM)
        key = spec.make_key({"N": 200}, "float32")
        job = models.Job(id="j" * 12, kind="tune", origin="queued", kernel=spec.name, kernel_version=spec.version,
                         state="done", sampler="tpe", budget_trials=1, request={}, created_at=utcnow())
        s.add(job)
        s.flush()
        s.add(models.JobKey(job_id=job.id, key_hash=key.stable_hash, key={**key.to_json(), "signature": newer},
                            state="done"))

    result, sent = _retune(url)
    assert result["skipped"] == [] and len(result["jobs"]) == 1
    assert [m.key["signature"] for m in sent] == [newer]  # what the worker rebuilds the inputs from
    with session_scope(url) as s:
        (row,) = [k for k in s.query(models.JobKey).all() if k.job_id == result["jobs"][0]["job"]]
        assert row.key["signature"] == newer and row.key["dims"] == {"N": 200}


def test_a_stale_drop_in_key_with_no_recorded_launch_is_skipped_with_the_reason(url):
    _stale(url, 200, 300)
    _miss(url, 300, _signature(300, 4))
    _miss(url, 200, None)  # a record without a signature (an older runtime) signs nothing

    result, sent = _retune(url)
    assert [s["key"] for s in result["skipped"]] == [{"N": 200}]
    assert "no launch recorded" in result["skipped"][0]["reason"]
    assert result["jobs"][0]["keys"] == [{"N": 300, "dtype": "float32"}]
    assert [m.key["dims"] for m in sent] == [{"N": 300}] and sent[0].key["signature"] == _signature(300, 4)


def test_tune_with_shapes_takes_the_keys_recorded_launch(url):
    """`tuner tune DROPIN --shape` (and `tuner submit`): a key with a recorded launch is tuned with
    its signature; one without is refused (the CLI's one line: tests/test_dropin.py)."""
    from dataclasses import replace

    from tuner.errors import UserError
    from tuner.miss_intake import signed_request
    from tuner.request import build_request
    from tuner.settings import from_env

    settings = replace(from_env(), db_url=url)
    _miss(url, 300, _signature(300, 4))
    req = signed_request(settings, build_request(kernels.LAYER_NORM, ["N=300"], ["float32"], 3))
    assert req.signatures == (_signature(300, 4),) and req.key_rows()[0]["signature"] == _signature(300, 4)
    with pytest.raises(UserError, match="no launch of N=200 float32 was recorded"):
        signed_request(settings, build_request(kernels.LAYER_NORM, ["N=300", "N=200"], ["float32"], 3))


def test_a_missed_drop_in_key_is_queued_with_the_signature_another_of_its_rows_recorded(url):
    """`tuner retune --misses` sums a key's rows over stacks, the most frequent first: a row with no
    signature (an imported record, an older runtime) counted more than a signed one does not leave
    the job without it; a key no row signed is skipped with the reason."""
    from workers.miss_jobs import enqueue_misses

    live_worker(url, "worker", SLUG, driver="999.1")
    _miss(url, 200, None, driver="555.1", count=9)
    _miss(url, 200, _signature(200, 6), count=1)
    _miss(url, 300, None, count=1)
    sent = []
    result = enqueue_misses(url, sent.append, holder="test", dead_after_s=60, trials=3, top=10,
                            kernel=kernels.LAYER_NORM, parallel=1, batch_trials=3)
    assert [m.key["signature"] for m in sent] == [_signature(200, 6)]
    assert [(s["key"], "no launch recorded" in s["reason"]) for s in result["skipped"]] == [({"N": 300}, True)]
