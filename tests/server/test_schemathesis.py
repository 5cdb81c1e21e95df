"""Property-based fuzzing of every operation in /openapi.json with schemathesis: no generated
request (valid or not) may get a 5xx, and the server must survive the run."""

import os
import subprocess
import sys
from pathlib import Path


def test_no_5xx_from_generated_requests(tiny, tmp_path):
    st = Path(sys.executable).with_name("schemathesis")
    out = subprocess.run(
        [str(st), "run", tiny.url + "/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", os.environ.get("KILN_SCHEMATHESIS_EXAMPLES", "40"),
         "--request-timeout", "60", "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,  # its cache dir lands there
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert tiny.alive()
