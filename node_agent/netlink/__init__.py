"""Netlink helpers of our own: a struct-based ctnetlink parser (ctparse.py).

pyroute2 provides the sockets and the protocol constants; its per-attribute parser is too
slow for a 50k-entry conntrack table (~3.6k entries/s measured), so parsing lives here.
"""
