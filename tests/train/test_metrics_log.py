"""TensorBoard after a restart: the new writer marks the points a killed attempt wrote past the resume step as
purged (tensorboardX's purge_step), so TensorBoard shows one point per logged step, as metrics.jsonl holds."""

import struct
import time

from tensorboardX.proto import event_pb2

from vlscale.train import metrics


def _events(path):
    data = path.read_bytes()
    out, i = [], 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        e = event_pb2.Event()
        e.ParseFromString(data[i + 12:i + 12 + n])
        out.append(e)
        i += 12 + n + 4
    return out


def test_a_restart_purges_the_killed_attempts_points(tmp_path):
    tb = metrics.TensorBoard(tmp_path / "tb")
    for step in range(1, 7):
        tb.write(step, {"loss": 1.0 / step})
    tb.close()
    first = sorted((tmp_path / "tb").iterdir())
    assert len(first) == 1
    time.sleep(1.1)  # event files are named by the second they were opened in
    tb = metrics.TensorBoard(tmp_path / "tb")  # resumed from the checkpoint at step 3
    tb.purge_after(3)
    tb.write(4, {"loss": 0.5})
    tb.close()
    second = [p for p in sorted((tmp_path / "tb").iterdir()) if p not in first]
    events = _events(second[0])
    marks = [e for e in events if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert [e.step for e in marks] == [4]  # TensorBoard drops the earlier file's points at steps >= 4
    assert [(e.step, e.summary.value[0].simple_value) for e in events if e.HasField("summary")] == [(4, 0.5)]


def test_a_first_run_writes_no_purge_mark(tmp_path):
    tb = metrics.TensorBoard(tmp_path / "tb")
    tb.purge_after(0)
    tb.write(1, {"loss": 2.0})
    tb.close()
    (path,) = (tmp_path / "tb").iterdir()
    assert not [e for e in _events(path) if e.HasField("session_log")]
