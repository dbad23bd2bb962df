"""The one copy of /etc a bubblewrap job sees: what it holds, what it leaves out, and when it is made again.

The copies are made from a stand-in for /etc in a temporary directory (real files, links and
modes); tests/integration/test_job_isolation.py runs jobs in bubblewrap with the node's own.
"""

from __future__ import annotations

import os
from pathlib import Path

from glidein_client.pilot.etc_view import CHECK_S, EtcView
from glidein_client.pilot.isolation import Bubblewrap, system_mounts
from glidein_client.pilot.launch import JobRun
from glidein_client.wire.schema import JobSpec


def stand_in_etc(tmp_path: Path) -> Path:
    root = tmp_path / "etc"
    (root / "ssl" / "certs").mkdir(parents=True)
    (root / "ssl" / "private").mkdir(mode=0o700)
    (root / "ssl" / "private" / "site.key").write_text("secret")
    (root / "ssl" / "certs" / "ca.pem").write_text("CA")
    (root / "ssl" / "certs" / "link.pem").symlink_to("/usr/share/ca-certificates/x.crt")
    (root / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "shadow").write_text("root:x")
    (root / "shadow").chmod(0o600)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "resolv.conf").write_text("nameserver 10.0.0.1\n")
    (root / "resolv.conf").symlink_to(tmp_path / "run" / "resolv.conf")
    return root


def view(tmp_path: Path, root: Path) -> EtcView:
    base = tmp_path / "pilot-etc"
    base.mkdir(mode=0o700)
    return EtcView(("hosts", "resolv.conf", "ssl", "shadow", "absent"), str(base), root=str(root))


def test_the_copy_holds_what_every_user_may_read_and_no_secret(tmp_path: Path) -> None:
    etc = view(tmp_path, stand_in_etc(tmp_path))
    copy = Path(etc.path(0.0))
    assert sorted(p.name for p in copy.iterdir()) == ["hosts", "resolv.conf", "ssl"]
    assert (copy / "hosts").read_text() == "127.0.0.1 localhost\n"
    # a top-level link is followed, as a bind would; links inside a directory stay links
    assert not (copy / "resolv.conf").is_symlink() and (copy / "resolv.conf").read_text() == "nameserver 10.0.0.1\n"
    assert os.readlink(copy / "ssl" / "certs" / "link.pem") == "/usr/share/ca-certificates/x.crt"
    assert (copy / "ssl" / "certs" / "ca.pem").read_text() == "CA"
    assert not (copy / "ssl" / "private").exists()  # readable by its owner only: left out
    etc.close()
    assert not Path(etc.base).exists()


def test_a_change_makes_a_new_copy_for_later_jobs_and_keeps_the_old(tmp_path: Path) -> None:
    root = stand_in_etc(tmp_path)
    etc = view(tmp_path, root)
    first = etc.path(0.0)
    assert etc.path(CHECK_S + 1) == first  # nothing changed: the same copy
    (tmp_path / "run" / "resolv.conf").write_text("nameserver 10.0.0.2\n")
    (root / "ssl" / "certs" / "new.pem").write_text("new CA")
    assert etc.path(CHECK_S + 2) == first  # checked at most every CHECK_S
    second = etc.path(2 * CHECK_S + 2)
    assert second != first
    assert Path(second, "resolv.conf").read_text() == "nameserver 10.0.0.2\n"
    assert Path(second, "ssl", "certs", "new.pem").exists()
    assert Path(first, "resolv.conf").read_text() == "nameserver 10.0.0.1\n"  # a running job keeps its copy


def test_bwrap_gives_the_job_the_copy_as_its_etc(tmp_path: Path) -> None:
    etc = view(tmp_path, stand_in_etc(tmp_path))
    mounts = system_mounts(etc=False)
    assert not any(dest.startswith("/etc") for _, _, dest in mounts)
    run = JobRun(
        attempt_id=1, job_id=1, spec=JobSpec(argv=["true"]), sandbox=tmp_path / "job", cores=frozenset({0}), gpus=()
    )
    argv = Bubblewrap(bwrap="/usr/bin/bwrap", mounts=mounts, etc=etc).argv(["true"], run)
    i = argv.index("/etc")
    assert argv[i - 2 : i + 1] == ["--ro-bind", etc.path(), "/etc"]
    assert argv.count("/etc") == 1 and argv.index("--tmpfs") < i < argv.index("--")
