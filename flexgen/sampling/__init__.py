"""The sampling library `flexgen sample`, `flexgen generate`, the bench and the demo share: class labels from a
sample's seed (`labels`), prompts (`prompts`), the one record with its seed, sharding and resume rules
(`manifest`), one batch with CFG and a policy's meter (`draw`), the files of a sample (`files`), the cost per sample
(`cost`) and a Latte / DiT sampling run (`run`)."""
