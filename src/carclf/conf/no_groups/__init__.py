"""The predict app's primary config dir, empty on purpose: its configs come from the ConfigStore
(``carclf.evaluate.config.register_configs``). Without a dir of its own, Hydra would search the
calling module's package (``pkg://carclf``), whose sub-packages (``evaluate``, ...) it would take
for config groups: ``evaluate=true`` would fail as a group choice."""
