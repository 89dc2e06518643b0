// netmon DNS tracer: cgroup_skb ingress program copying DNS responses (UDP source port 53,
// IPv4 and IPv6) with the receiving client's address to a ring buffer for user space to
// parse (node_agent/dns/). At most DNS_MAX payload bytes are copied (classic UDP DNS limit;
// longer EDNS answers arrive cut and the parser keeps what is complete). Always allows the
// packet. Events that find the ring buffer full are counted per CPU (netmon_dstats[0]).
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>

#define DNS_MAX 512

struct dns_event {
    u8 family;          // 4 or 6
    u8 pad;
    u16 len;            // bytes of payload copied into data
    u16 orig_len;       // UDP payload length on the wire
    u16 pad2;
    u8 client[16];      // destination of the response = the client that asked
    u8 server[16];
    u8 data[DNS_MAX];
};

BPF_RINGBUF_OUTPUT(netmon_dns_events, 64);   // 64 pages = 256 KiB
BPF_PERCPU_ARRAY(netmon_dstats, u64, 2);     // [0] lost (ring full), [1] copy failed

static __always_inline void dstat(int slot) {
    u64 *c = netmon_dstats.lookup(&slot);
    if (c)
        *c += 1;
}

int netmon_dns_in(struct __sk_buff *skb) {
    // One load covers the IP header and the UDP ports in the common case (no IPv4 options):
    // every ingress packet pays for this, DNS or not.
    u8 h[40 + 4];
    u32 l4 = 0;
    u8 family = 0;
    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        if (bpf_skb_load_bytes(skb, 0, h, 20 + 4) < 0)
            return 1;
        struct iphdr *ip = (void *)h;
        if (ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x1fff)))
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
        if (h[6] != IPPROTO_UDP || h[40] != 0 || h[41] != 53)
            return 1;
        l4 = 40;
        family = 6;
    } else {
        return 1;
    }

    u32 off = l4 + 8;
    if (skb->len <= off)
        return 1;
    u32 n = skb->len - off;
    u32 orig = n;
    if (n > DNS_MAX)
        n = DNS_MAX;

    struct dns_event *e = netmon_dns_events.ringbuf_reserve(sizeof(struct dns_event));
    if (!e) {
        dstat(0);
        return 1;
    }
    e->family = family;
    e->pad = 0;
    e->pad2 = 0;
    e->orig_len = orig > 0xffff ? 0xffff : orig;
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
    // folding the checks away before they reach the helper call.
    u64 len = n;
    asm volatile("" : "+r"(len));
    len &= (2 * DNS_MAX - 1);
    if (len == 0 || len > DNS_MAX) {
        netmon_dns_events.ringbuf_discard(e, 0);
        return 1;
    }
    if (bpf_skb_load_bytes(skb, off, e->data, len) < 0) {
        dstat(1);
        netmon_dns_events.ringbuf_discard(e, 0);
        return 1;
    }
    e->len = len;
    netmon_dns_events.ringbuf_submit(e, 0);
    return 1;
}
