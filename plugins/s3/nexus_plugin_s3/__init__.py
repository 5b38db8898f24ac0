"""nexus-plugin-s3: the blob role on S3 (``s3://bucket/prefix``) and S3 workflow nodes.

Import-light: nothing here imports the S3 client; :mod:`.backend` does on first use.
"""

from __future__ import annotations

__all__ = ["__version__"]

#: The distribution's version.
__version__ = "0.1.0"
