"""Netlink helpers of our own: a struct-based ctnetlink parser (ctparse.py) and the two
rtnetlink dumps the agent needs, links and addresses (rtnl.py).

pyroute2 provides sockets in other network namespaces (tests, tools) and protocol constants;
its per-attribute parser is too slow for a 50k-entry conntrack table (~3.6k entries/s
measured), and its `iproute` module too heavy to import for two dumps a minute.
"""
