"""Issue 23, third wave: a second party's witness end to end. `headwater witness serve`
(its own key and receipt file, 127.0.0.1) countersigns the heads `audit checkpoint
--witness URL` sends; `audit verify --witness URL --witness-public-key` passes on the
intact store and fails once the chain's tail is deleted or its head rewritten, although
the chain alone still verifies; the witness refuses the shortened chain's new head."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.audit_pipeline import fill_in_child, key_pair

from conftest import HEADWATER, REPO, run_headwater

TAMPER = """
from headwater.stream_processors.store import Store
with Store("chdb://{data}/clickhouse") as s:
    for sql in {sql!r}:
        s.command(sql, {{"p": {producer!r}}})
"""




def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=180, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def witness(tmp_path) -> Iterator[tuple[str, Path, Path]]:
    """A witness run by a second party: (URL, the operator's checkpoint key, the witness's
    public key)."""
    side = tmp_path / "second-party"
    side.mkdir()
    wkey, wpub = key_pair(side, "witness")
    okey, opub = key_pair(tmp_path, "operator")
    proc = subprocess.Popen([*HEADWATER, "witness", "serve", "--key", str(wkey), "--store",
                             str(side / "receipts.jsonl"), "--trust", str(opub),
                             "--listen", "127.0.0.1:0"],
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    found = re.search(r"serving (http://127\.0\.0\.1:\d+)", line)
    assert found, line + (proc.stderr.read() if proc.poll() is not None else "")
    try:
        yield found.group(1), okey, wpub
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("tamper", ["delete tail", "rewrite head"])
def test_verify_against_a_second_party_witness(tmp_path, witness, tamper) -> None:
    url, operator_key, witness_public = witness
    data = tmp_path / "data"
    producer = fill_in_child(data)
    made = run_headwater("audit", "checkpoint", "--data-dir", str(data), "--witness", url,
                         "--key", str(operator_key),
                         env={"HEADWATER_WITNESS_PUBLIC_KEY": str(witness_public)})
    assert made.returncode == 0, made.stderr
    args = ["audit", "verify", "--data-dir", str(data), "--witness", url,
            "--witness-public-key", str(witness_public), "--json"]
    ok = run_headwater(*args)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["witness"] == {"witness": url, "failures": [],
                                                 "timestamps_not_checked": 0}
    # the operator's own key is not the witness's: its receipts do not verify with it
    wrong = run_headwater(*args[:-3], "--witness-public-key", str(operator_key.with_suffix(
        ".pub.pem")), "--json")
    assert wrong.returncode == 1
    assert "not the trusted witness key" in json.loads(wrong.stdout)["witness"]["failures"][0]

    head = ("(SELECT max(seq) FROM events WHERE producer_id = {p:String})")
    zero = "unhex(repeat('00', 32))"
    sql = (["DELETE FROM events WHERE producer_id = {p:String} AND seq >= 7"]
           if tamper == "delete tail" else [  # the head's hash and its first-write receipt
               f"ALTER TABLE event_receipts UPDATE hash = {zero} WHERE event_id IN (SELECT "
               f"event_id FROM events WHERE producer_id = {{p:String}} AND seq = {head}) "
               "SETTINGS mutations_sync = 1",
               f"ALTER TABLE events UPDATE hash = {zero} WHERE producer_id = {{p:String}} "
               f"AND seq = {head} SETTINGS mutations_sync = 1"])
    _python(TAMPER.format(data=data, sql=sql, producer=producer))
    alone = run_headwater("audit", "verify", "--data-dir", str(data), "--json")
    assert json.loads(alone.stdout)["problems"] == []  # the chain alone looks whole
    failed = run_headwater(*args)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    (failure,) = json.loads(failed.stdout)["witness"]["failures"]
    assert ("tail was deleted" if tamper == "delete tail" else "tail was rewritten") in failure
    if tamper == "delete tail":  # the shorter chain's head: the witness will not hold it
        again = run_headwater("audit", "checkpoint", "--data-dir", str(data), "--witness",
                              url, "--key", str(operator_key))
        assert again.returncode == 2 and "shortens the chain" in again.stderr, again.stderr
