"""The YAML configs of carclf's Hydra apps, shipped in the package (``pkg://carclf.conf``).

A package (this file) so Hydra finds it by module name; the repo's top-level ``conf`` is a link
here. No code lives here.
"""
