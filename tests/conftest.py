"""Suite-wide settings."""

from __future__ import annotations

import os

# Ray gives its node processes 10 s to start by default; on a loaded 2-core machine (CI, two
# suites at once) the dashboard's processes take longer. Wait for them instead of failing.
# Its dashboard likewise gives each of its modules 30 s, and gives up on all of them after one
# is late (seen on CI: "Module MetricsHead failed to start").
os.environ.setdefault("RAY_raylet_start_wait_time_s", "300")
os.environ.setdefault("RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT", "300")
