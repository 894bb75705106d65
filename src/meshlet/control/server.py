"""The control plane's HTTPS server (owned by the control-plane engineer, issue 6).

Placeholder so the area is visibly taken; the server lands in following commits.
"""
