// netmon DNS tracer: cgroup_skb ingress program copying DNS responses (UDP or TCP source
// port 53, IPv4 and IPv6) with the receiving client's address to a ring buffer for user
// space to parse (node_agent/dns/). Up to DNS_MAX payload bytes per packet are copied (EDNS
// answers up to 4096 bytes whole; one TCP segment at a time, user space reassembles the
// stream). Only answers with records cross: a UDP response (or a TCP segment holding one
// whole message) that is not a response, has an error RCODE or no answer records is
// counted and skipped. Always allows the packet. Counters per CPU in netmon_dstats.
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>

#define DNS_MAX 4096

// netmon_dstats slots
#define S_LOST 0        // ring buffer full: the response is lost
#define S_COPY 1        // bpf_skb_load_bytes failed
#define S_FILTERED 2    // not an answer with records (NXDOMAIN, SERVFAIL, empty, query)
#define S_TRUNCATED 3   // payload longer than DNS_MAX: the first DNS_MAX bytes were sent

struct dns_event {
    u8 family;          // 4 or 6
    u8 proto;           // IPPROTO_UDP or IPPROTO_TCP
    u16 len;            // bytes of payload copied into data
    u16 orig_len;       // transport payload length on the wire (capped at 65535)
    u16 cport;          // the client's port (the response's destination port)
    u32 seq;            // TCP sequence number of the segment's first payload byte (host order)
    u8 client[16];      // destination of the response = the client that asked
    u8 server[16];
    u8 data[DNS_MAX];
};

BPF_RINGBUF_OUTPUT(netmon_dns_events, 128);  // 128 pages = 512 KiB
BPF_PERCPU_ARRAY(netmon_dstats, u64, 4);
BPF_PERCPU_ARRAY(netmon_dscratch, struct dns_event, 1);  // the event is built here, not on the stack

static __always_inline void dstat(int slot) {
    u64 *c = netmon_dstats.lookup(&slot);
    if (c)
        *c += 1;
}

// A DNS header at `off` that is a response without error and with answer records.
static __always_inline int has_answers(struct __sk_buff *skb, u32 off) {
    u8 hdr[8];
    if (bpf_skb_load_bytes(skb, off, hdr, 8) < 0)
        return 0;
    if (!(hdr[2] & 0x80))           // QR: a query, not a response
        return 0;
    if (hdr[3] & 0x0f)              // RCODE: NXDOMAIN, SERVFAIL, REFUSED, ...
        return 0;
    return hdr[6] | hdr[7];         // ANCOUNT
}

int netmon_dns_in(struct __sk_buff *skb) {
    // One load covers the IP header and the transport ports in the common case (no IPv4
    // options): every ingress packet pays for this, DNS or not.
    u8 h[40 + 16];
    u32 l4 = 0;
    u8 family = 0, proto = 0;
    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        if (bpf_skb_load_bytes(skb, 0, h, 20 + 4) < 0)
            return 1;
        struct iphdr *ip = (void *)h;
        proto = ip->protocol;
        if ((proto != IPPROTO_UDP && proto != IPPROTO_TCP) || (ip->frag_off & bpf_htons(0x1fff)))
            return 1;
        l4 = ip->ihl * 4;
        if (l4 != 20 && bpf_skb_load_bytes(skb, l4, h + 20, 4) < 0)
            return 1;
        if (h[20] != 0 || h[21] != 53)
            return 1;
        family = 4;
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        if (bpf_skb_load_bytes(skb, 0, h, 40 + 4) < 0)
            return 1;
        proto = h[6];
        if ((proto != IPPROTO_UDP && proto != IPPROTO_TCP) || h[40] != 0 || h[41] != 53)
            return 1;
        l4 = 40;
        family = 6;
    } else {
        return 1;
    }
    u16 cport = ((u16)h[family == 4 ? 22 : 42] << 8) | h[family == 4 ? 23 : 43];

    u32 off = l4 + 8;
    u32 seq = 0;
    if (proto == IPPROTO_TCP) {
        u8 t[14];
        if (bpf_skb_load_bytes(skb, l4, t, 14) < 0)
            return 1;
        seq = ((u32)t[4] << 24) | ((u32)t[5] << 16) | ((u32)t[6] << 8) | t[7];
        off = l4 + ((t[12] >> 4) * 4);
    }
    if (skb->len <= off)
        return 1;                   // no payload (TCP ACKs, handshakes)
    u32 n = skb->len - off;
    u32 orig = n;
    if (proto == IPPROTO_UDP) {
        if (!has_answers(skb, off)) {
            dstat(S_FILTERED);
            return 1;
        }
    } else if (n >= 14) {
        // A segment holding exactly one whole message (length prefix + message) is filtered
        // like UDP; other segments may continue a message and go to the reassembler.
        u8 pre[2];
        if (bpf_skb_load_bytes(skb, off, pre, 2) == 0 && (((u32)pre[0] << 8) | pre[1]) + 2 == n
                && !has_answers(skb, off + 2)) {
            dstat(S_FILTERED);
            return 1;
        }
    }
    if (n > DNS_MAX) {
        n = DNS_MAX;
        dstat(S_TRUNCATED);
    }

    int zero = 0;
    struct dns_event *e = netmon_dscratch.lookup(&zero);
    if (!e)
        return 1;
    e->family = family;
    e->proto = proto;
    e->orig_len = orig > 0xffff ? 0xffff : orig;
    e->cport = cport;
    e->seq = seq;
    __builtin_memset(e->client, 0, sizeof(e->client));
    __builtin_memset(e->server, 0, sizeof(e->server));
    if (family == 4) {
        bpf_skb_load_bytes(skb, 12, e->server, 4);
        bpf_skb_load_bytes(skb, 16, e->client, 4);
    } else {
        bpf_skb_load_bytes(skb, 8, e->server, 16);
        bpf_skb_load_bytes(skb, 24, e->client, 16);
    }
    // Bound for the verifier: a length in [1, DNS_MAX]. The empty asm keeps clang from
    // folding the checks away before they reach the helper calls.
    u64 len = n;
    asm volatile("" : "+r"(len));
    len &= (2 * DNS_MAX - 1);
    if (len == 0 || len > DNS_MAX)
        return 1;
    if (bpf_skb_load_bytes(skb, off, e->data, len) < 0) {
        dstat(S_COPY);
        return 1;
    }
    e->len = len;
    u64 size = offsetof(struct dns_event, data) + len;
    asm volatile("" : "+r"(size));
    if (size > sizeof(struct dns_event))
        return 1;
    if (netmon_dns_events.ringbuf_output(e, size, 0) < 0)
        dstat(S_LOST);
    return 1;
}
