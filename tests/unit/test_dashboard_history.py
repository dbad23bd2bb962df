"""The dashboard's job page shows the job's history, escaped like every user-supplied string."""

from __future__ import annotations

import msgspec

from glidein_client.wire.schema import JobChange, JobEvent, JobSpec, JobState, JobView
from glidein_server import dashboard


def test_job_page_lists_holds_and_retries_escaped() -> None:
    job = JobView(
        id=3,
        owner="ann",
        state=JobState.IDLE,
        spec=JobSpec(argv=["x"]),
        submitted_at=0.0,
        history=[
            JobEvent(at=0.0, action="held", by="ann", reason="<script>alert(1)</script>"),
            JobEvent(at=1.0, action="retried", by="ann", changes=[JobChange(field="memory_mb", old=1024, new=4096)]),
        ],
    )
    html = dashboard.job_page(job, [])
    assert "<h2>History</h2>" in html and "<script>alert" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<td>retried</td><td>ann</td><td>-</td><td>memory_mb 1024 -&gt; 4096</td>" in html
    assert "<h2>History</h2>" not in dashboard.job_page(msgspec.structs.replace(job, history=[]), [])
