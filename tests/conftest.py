"""Suite-wide settings."""

from __future__ import annotations

import os

# Ray gives its node processes 10 s to start by default; on a loaded 2-core machine (CI, two
# suites at once) the dashboard's processes take longer. Wait for them instead of failing.
os.environ.setdefault("RAY_raylet_start_wait_time_s", "300")
