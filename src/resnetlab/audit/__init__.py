"""``resnetlab data audit``: duplicates (exact, perceptual, feature), class balance, odd images and likely
label errors of a dataset, optionally against another one. One job per module: ``scan`` reads the
images, ``duplicates``, ``oddities`` and ``label_issues`` find, ``audit_report`` writes."""

__all__ = ["AuditOptions", "audit_data"]


def __getattr__(name: str):
    # Lazy: every CLI start imports audit.duplicates for the parser's defaults, and run.py pulls in the
    # report stack (matplotlib, scikit-learn), seconds of start-up that no other command needs.
    if name in __all__:
        from resnetlab.audit import run

        return getattr(run, name)
    raise AttributeError(f"module 'resnetlab.audit' has no attribute {name!r}")
