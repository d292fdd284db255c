"""A full, read-only or vanished output, wherever it is raised (Python, TensorStore inside Orbax, safetensors), is
said as one line naming the file system and the file."""

import errno
import os

import pytest

from vlscale import cli
from vlscale.runtime import disk_errors


def test_python_oserror_names_mount_and_file(tmp_path):
    e = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "a" / "b.npz"))
    msg = disk_errors.disk_error_message(e)
    mount = disk_errors._mount_point(str(tmp_path))
    assert msg == f"no space left on {mount} while writing {tmp_path / 'a' / 'b.npz'}"


def test_tensorstore_error_inside_a_valueerror_with_its_cause_chain():
    ts = ValueError('RESOURCE_EXHAUSTED: Error writing "x/0.0" in OCDBT database at local file "/tmp/w/ck/": '
                    'Failed writing: "/tmp/w/ck/d/84633b06": Failed to write 8097792 bytes to file 21: No space '
                    "left on device [os_error_code='28']")
    try:
        try:
            raise ts
        except ValueError as inner:
            raise RuntimeError("save finalize failed") from inner
    except RuntimeError as outer:
        msg = disk_errors.disk_error_message(outer)
    assert msg == f"no space left on {disk_errors._mount_point('/tmp/w/ck/d/84633b06')} while writing /tmp/w/ck/d/84633b06"


def test_safetensors_style_message_uses_the_commands_output():
    class SafetensorError(Exception):
        pass

    msg = disk_errors.disk_error_message(SafetensorError("Error while serializing: IoError(Os { code: 28, kind: "
                                                   "StorageFull, message: \"No space left on device\" })"),
                                   "/tmp/out/x.safetensors")
    assert msg.startswith("no space left on /") and msg.endswith("while writing /tmp/out/x.safetensors")


@pytest.mark.parametrize("code,text", [(errno.EROFS, "read-only file system"), (errno.EDQUOT, "disk quota exceeded"),
                                       (errno.ENOENT, "its folder vanished")])
def test_other_conditions_of_the_output(code, text):
    msg = disk_errors.disk_error_message(OSError(code, os.strerror(code), "/tmp/w/metrics.jsonl"))
    assert text in msg and "/tmp/w/metrics.jsonl" in msg


def test_a_bug_is_not_a_disk_error():
    assert disk_errors.disk_error_message(ValueError("tree structures do not match")) is None
    assert disk_errors.disk_error_message(KeyError("params")) is None


def test_the_cli_turns_a_library_disk_error_into_one_line(monkeypatch, capsys, tmp_path):
    def handler(args):
        raise RuntimeError("safetensors: No space left on device (os error 28)")

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_handler(parser(), handler))
    rc = cli.main(["models"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("vlscale models: error: no space left on"), err


def _with_handler(parser, handler):
    real = parser.parse_args

    def parse_args(argv):
        args = real(argv)
        args._handler = handler
        return args

    parser.parse_args = parse_args
    return parser
