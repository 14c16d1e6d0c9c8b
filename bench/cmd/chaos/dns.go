package main

import (
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// dnsServer is an authoritative DNS server on 127.0.0.1, over UDP only
// (Caddy's resolvers ask over UDP, and a few A records fit in a datagram),
// that answers the A records of one name from a list the
// suite changes during a run; every other question gets an empty answer.
// It is where the dynamic scenario's upstreams come from.
type dnsServer struct {
	addr string
	name string // fully qualified
	udp  *dns.Server

	mu  sync.Mutex
	ips []string
}

// startDNS starts a server that answers name's A records with ips.
func startDNS(name string, ips ...string) (*dnsServer, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("DNS server: %w", err)
	}
	d := &dnsServer{addr: pc.LocalAddr().String(), name: dns.Fqdn(name), ips: ips}
	started := make(chan struct{}, 1)
	d.udp = &dns.Server{PacketConn: pc, Handler: d, NotifyStartedFunc: func() { started <- struct{}{} }}
	go func() { _ = d.udp.ActivateAndServe() }()
	select {
	case <-started:
		return d, nil
	case <-time.After(5 * time.Second):
		pc.Close()
		return nil, fmt.Errorf("DNS server on %s did not start", d.addr)
	}
}

// setA replaces the answer.
func (d *dnsServer) setA(ips ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ips = slices.Clone(ips)
}

// answer returns the current A records.
func (d *dnsServer) answer() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.ips)
}

// ServeDNS answers a query: the A records for the name, nothing else. A
// TTL of 1 s keeps resolvers from holding an old answer.
func (d *dnsServer) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	for _, q := range req.Question {
		if q.Qtype != dns.TypeA || !dnsNameEqual(q.Name, d.name) {
			continue
		}
		hdr := dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}
		for _, ip := range d.answer() {
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.ParseIP(ip)})
		}
	}
	_ = w.WriteMsg(m)
}

// dnsNameEqual compares two fully qualified names, ignoring case.
func dnsNameEqual(a, b string) bool { return dns.CanonicalName(a) == dns.CanonicalName(b) }

// close stops the server.
func (d *dnsServer) close() { _ = d.udp.Shutdown() }
