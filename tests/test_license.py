"""The LICENSE file is the licence pyproject.toml declares."""

from __future__ import annotations

import hashlib
import tomllib

from tests.conftest import REPO

#: sha256 of https://www.apache.org/licenses/LICENSE-2.0.txt (also Debian's
#: /usr/share/common-licenses/Apache-2.0).
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def test_license_file_is_the_declared_licence() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]
    assert declared == "Apache-2.0"
    text = (REPO / "LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_0_SHA256, "LICENSE is not the standard Apache-2.0 text"
