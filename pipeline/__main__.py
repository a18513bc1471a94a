import sys

from distill.cpu_sharing import share_cores_gracefully

share_cores_gracefully()  # before torch is imported: libgomp reads its settings once, at load

from pipeline.cli import main  # noqa: E402

sys.exit(main())
