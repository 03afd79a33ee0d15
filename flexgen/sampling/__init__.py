"""The sampling library: what `flexgen sample`, `flexgen generate`, the bench and the demo share (labels, seeds)."""
