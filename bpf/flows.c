// netmon flow counter: cgroup_skb ingress + egress, bytes and packets per connection.
//
// Attached to a cgroup v2 directory (normally the root) with BPF_F_ALLOW_MULTI. In
// cgroup_skb programs offset 0 is the IP header and skb->len counts from it, which is what
// conntrack's accounting counts too, so both modes agree on bytes.
//
// One map entry per connection per network namespace. The key holds the two endpoints in a
// fixed order (side A = the smaller (address, port)), so both directions of a connection find
// the same entry with one lookup; the value remembers which side sent the first packet (the
// "orig" side, as in conntrack), and each packet counts as orig or reply by its sender.
// The netns cookie keeps the two ends of a connection between pods of one node apart (user
// space keeps the originating side only).
//
// Bound: MAX_FLOWS entries (a plain hash, preallocated; user space deletes ended and idle
// entries). Packets that find the map full are counted per CPU in netmon_fstats, never lost
// silently.
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>

#ifndef MAX_FLOWS
#define MAX_FLOWS 65536
#endif

// flow_val.flags
#define F_LOCAL_FIRST 1   // the first packet was egress: a local socket opened the connection
#define F_FIN_ORIG 2
#define F_FIN_REPLY 4
#define F_RST 8
#define F_ORIG_IS_B 16    // the first packet was sent by side B

// netmon_fstats slots (per CPU, summed by user space)
#define S_FULL_PACKETS 0  // packets not counted: map full
#define S_FULL_BYTES 1
#define S_UNTRACKED 2     // other protocols, non-echo ICMP, IPv6 extension headers, fragments
#define S_SHORT 3         // headers could not be read

struct flow_key {
    u64 netns;
    u64 a[2];             // side A address (IPv4: first 4 bytes, rest 0)
    u64 b[2];             // side B address
    u16 aport;            // host order; ICMP echo: the identifier on both sides
    u16 bport;
    u8 proto;
    u8 family;            // 4 or 6
    u8 pad[2];
};

struct flow_val {
    u64 bytes[2];         // [0] orig (sender of the first packet -> peer), [1] reply
    u64 packets[2];
    u64 first_ns;         // bpf_ktime_get_ns() of the first packet
    u64 last_ns;
    u32 flags;
    u32 pad;
};

BPF_TABLE("hash", struct flow_key, struct flow_val, netmon_flows, MAX_FLOWS);
BPF_PERCPU_ARRAY(netmon_fstats, u64, 4);

static __always_inline void stat_add(int slot, u64 n) {
    u64 *c = netmon_fstats.lookup(&slot);
    if (c)
        *c += n;
}

// Headers are read with as few helper calls as possible: one load of the IP header plus the
// first 14 bytes of the transport header (enough for TCP ports and flags, UDP ports, the ICMP
// echo id) when the packet is long enough and IPv4 has no options; otherwise a second load.
#define V4_FULL (20 + 14)
#define V4_MIN (20 + 8)
#define V6_FULL (40 + 14)
#define V6_MIN (40 + 8)

static __always_inline int count(struct __sk_buff *skb, int egress) {
    // A packet between two sockets of one netns (loopback, or to one of its own addresses,
    // which the kernel also delivers through lo) passes egress and then ingress: count it
    // at egress only, as conntrack counts it once.
    if (!egress && skb->ifindex == 1)   // LOOPBACK_IFINDEX
        return 1;
    struct flow_key k = {};
    u64 src[2] = {}, dst[2] = {};
    u16 sport = 0, dport = 0;
    u8 family = 0;
    u8 proto = 0;
    u8 h[V6_FULL];          // IP header, then the transport header at l4h
    u8 *t;                  // transport header bytes (at least 8 valid, 14 for TCP)
    u32 len = skb->len;

    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        if (len >= V4_FULL) {
            if (bpf_skb_load_bytes(skb, 0, h, V4_FULL) < 0)
                goto short_pkt;
        } else if (len >= V4_MIN) {
            if (bpf_skb_load_bytes(skb, 0, h, V4_MIN) < 0)
                goto short_pkt;
        } else {
            goto short_pkt;
        }
        struct iphdr *ip = (void *)h;
        if (ip->frag_off & bpf_htons(0x1fff)) {   // non-first fragment: no ports
            stat_add(S_UNTRACKED, 1);
            return 1;
        }
        proto = ip->protocol;
        __builtin_memcpy(src, &ip->saddr, 4);
        __builtin_memcpy(dst, &ip->daddr, 4);
        family = 4;
        t = h + 20;
        if (ip->ihl != 5) {                       // IP options: the transport header is further on
            if (bpf_skb_load_bytes(skb, ip->ihl * 4, h + 20, 14) < 0)
                goto short_pkt;
        } else if (proto == IPPROTO_TCP && len < V4_FULL) {
            goto short_pkt;
        }
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        if (len >= V6_FULL) {
            if (bpf_skb_load_bytes(skb, 0, h, V6_FULL) < 0)
                goto short_pkt;
        } else if (len >= V6_MIN) {
            if (bpf_skb_load_bytes(skb, 0, h, V6_MIN) < 0)
                goto short_pkt;
        } else {
            goto short_pkt;
        }
        struct ipv6hdr *ip6 = (void *)h;
        proto = ip6->nexthdr;       // extension headers are not walked: counted as untracked
        __builtin_memcpy(src, &ip6->saddr, 16);
        __builtin_memcpy(dst, &ip6->daddr, 16);
        family = 6;
        t = h + 40;
        if (proto == IPPROTO_TCP && len < V6_FULL)
            goto short_pkt;
    } else {
        stat_add(S_UNTRACKED, 1);
        return 1;
    }

    u8 tcpflags = 0;
    if (proto == IPPROTO_TCP) {
        sport = ((u16)t[0] << 8) | t[1];
        dport = ((u16)t[2] << 8) | t[3];
        tcpflags = t[13];
    } else if (proto == IPPROTO_UDP) {
        sport = ((u16)t[0] << 8) | t[1];
        dport = ((u16)t[2] << 8) | t[3];
    } else if ((proto == IPPROTO_ICMP && family == 4) || (proto == IPPROTO_ICMPV6 && family == 6)) {
        u8 ty = t[0];
        int echo = family == 4 ? (ty == 8 || ty == 0) : (ty == 128 || ty == 129);
        if (!echo) {   // errors belong to another connection; other types are rare
            stat_add(S_UNTRACKED, 1);
            return 1;
        }
        sport = ((u16)t[4] << 8) | t[5];
        dport = sport;
    } else {
        stat_add(S_UNTRACKED, 1);
        return 1;
    }
    // Side A = the smaller (address, port): both directions build the same key.
    int from_a = src[0] < dst[0] || (src[0] == dst[0] && (src[1] < dst[1] || (src[1] == dst[1] && sport <= dport)));
    if (from_a) {
        k.a[0] = src[0]; k.a[1] = src[1]; k.aport = sport;
        k.b[0] = dst[0]; k.b[1] = dst[1]; k.bport = dport;
    } else {
        k.a[0] = dst[0]; k.a[1] = dst[1]; k.aport = dport;
        k.b[0] = src[0]; k.b[1] = src[1]; k.bport = sport;
    }
    k.proto = proto;
    k.family = family;
    k.netns = bpf_get_netns_cookie(skb);

    u64 now = bpf_ktime_get_coarse_ns();   // idle detection only: tick resolution is plenty
    struct flow_val *v = netmon_flows.lookup(&k);
    if (!v) {
        struct flow_val nv = {};
        nv.first_ns = now;
        nv.flags = (egress ? F_LOCAL_FIRST : 0) | (from_a ? 0 : F_ORIG_IS_B);
        // insert = BPF_NOEXIST: another CPU may have created it a moment ago; then use
        // theirs. A failed insert that leaves no entry means the map is full.
        netmon_flows.insert(&k, &nv);
        v = netmon_flows.lookup(&k);
        if (!v) {
            stat_add(S_FULL_PACKETS, 1);
            stat_add(S_FULL_BYTES, len);
            return 1;
        }
    }
    // orig when this packet's sender is the side that sent the first packet
    int dir = (from_a == !(v->flags & F_ORIG_IS_B)) ? 0 : 1;
    __sync_fetch_and_add(&v->bytes[dir], len);
    __sync_fetch_and_add(&v->packets[dir], 1);
    v->last_ns = now;
    if (tcpflags & 0x05) {   // FIN or RST: set the bit once (plain store; a rare lost bit
                             // only delays the end until idle expiry)
        u32 bit = (tcpflags & 0x04) ? F_RST : (dir ? F_FIN_REPLY : F_FIN_ORIG);
        if (!(v->flags & bit))
            v->flags |= bit;
    }
    return 1;   // count, never drop

short_pkt:
    stat_add(S_SHORT, 1);
    return 1;
}

int netmon_flow_in(struct __sk_buff *skb) { return count(skb, 0); }
int netmon_flow_out(struct __sk_buff *skb) { return count(skb, 1); }
