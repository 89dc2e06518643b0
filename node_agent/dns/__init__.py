"""DNS tracing: which domain each IP a pod talked to was looked up as.

parser.py (wire format -> (domain asked, ip, ttl)), cache.py (IP -> domain with a TTL cap and
the window's lookups), tracer.py (BCC cgroup ingress program bpf/dns.c feeding the parser),
exporter.py (a window's lookups -> the raw/dns table).
"""
