"""The node facts a pilot reads for provenance, from the real formats of /proc/cpuinfo and /etc/os-release."""

from __future__ import annotations

from glidein_client.pilot.provenance import cpu_model, os_release
from glidein_client.user.provenance import usage_line

X86 = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 106
model name\t: Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz
"""
POWER9 = """processor\t: 0
cpu\t\t: POWER9, altivec supported
clock\t\t: 3800.000000MHz
"""
OS_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'


def test_cpu_model_of_x86_and_power() -> None:
    assert cpu_model(X86) == "Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz"
    assert cpu_model(POWER9) == "POWER9, altivec supported"


def test_os_release_pretty_name() -> None:
    assert os_release(OS_RELEASE) == "Debian GNU/Linux 12 (bookworm)"
    assert os_release("") == ""


def test_usage_line_says_efficiency_and_nothing_before_a_run() -> None:
    line = usage_line(4, 100.0, 360.0, 0.9, 512.0)
    assert line.startswith("usage:     4 cores,") and "CPU efficiency 90%" in line and "max RSS 512 MB" in line
    assert usage_line(1, None, None, None, None) == ""
