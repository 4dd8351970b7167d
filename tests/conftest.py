import sys
from pathlib import Path

# tests/ holds shared helpers (distributed.py); spawned DDP workers need them importable too.
sys.path.insert(0, str(Path(__file__).parent))
