"""The security review's checks (``flows/security_review.py``): each task returns an
``opsflow.security.CheckOutcome``."""
