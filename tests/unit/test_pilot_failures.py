"""Reading why a pilot failed at start from its output: the telling line and the key to check."""

from __future__ import annotations

import pytest

from glidein_client.site.pilot_failures import explain


@pytest.mark.parametrize(
    ("output", "key", "reason"),
    [
        (
            "/var/spool/slurmd/job42/slurm_script: line 20: /opt/py/bin/python3: Permission denied\n",
            "batch.python",
            "Permission denied",
        ),
        (
            "INFO pilot: detected cpus: 1\nerror: The CA file /home/op/ca.pem cannot be used: No such file.\n",
            "site.ca_file",
            "The CA file",
        ),
        (
            "Traceback (most recent call last):\nModuleNotFoundError: No module named 'glidein_client'\n",
            "batch.python",
            "No module named",
        ),
        (
            "error: cannot reach the server at https://srv:8321: Connection refused\n",
            "site.url",
            "Connection refused",
        ),
        ("something odd\nerror: exploded\nbye\n", "the pilot's output", "error: exploded"),
    ],
)
def test_explain_names_the_reason_and_the_key(output: str, key: str, reason: str) -> None:
    failure = explain("glidein-hpc1-7", output)
    assert failure is not None and failure.key == key and reason in failure.reason
    text = failure.text("/etc/glidein/hpc1.toml")
    assert (
        text.startswith("pilot glidein-hpc1-7 failed at start: ") and f"check {key} in /etc/glidein/hpc1.toml" in text
    )


def test_empty_output_says_nothing() -> None:
    assert explain("glidein-hpc1-7", "\n \n") is None
