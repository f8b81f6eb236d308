"""``diag ui``: the domain expert's web tool (see :mod:`diag.ui.session` for what it does and
:mod:`diag.ui.server` for how it is served)."""
