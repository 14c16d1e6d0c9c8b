package fleet

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bifrost-proxy/bifrost/fleet/fleettest"
)

// exchanges checks that two fleets on url see each other's entries, and
// returns the first.
func exchanges(t *testing.T, url string) *Fleet {
	t.Helper()
	a := newFleet(t, url, "a")
	b := newFleet(t, url, "b")
	eventually(t, 5*time.Second, "both connected", func() bool { return connected(a)() && connected(b)() })
	a.Publish(Entry{Pool: "api", Upstream: "u1", Kind: KindIsolated, Until: time.Now().Add(time.Minute)})
	eventually(t, 3*time.Second, "b sees a's isolation", func() bool { return has(b, "a", "u1", KindIsolated) })
	return a
}

// A URL with an ACL user and password connects as that user.
func TestFleetACLUser(t *testing.T) {
	srv := startRedis(t, "--user", "default", "off", "--user", "edge", "on", ">edge-pw-77", "~*", "&*", "+@all")
	a := exchanges(t, fmt.Sprintf("redis://edge:edge-pw-77@127.0.0.1:%d/0", srv.Port()))
	if st := a.Status().Store; strings.Contains(st, "edge-pw-77") || !strings.Contains(st, "edge") {
		t.Errorf("store shown as %q, want the user without the password", st)
	}
	wrong := newFleet(t, fmt.Sprintf("redis://edge:nope@127.0.0.1:%d/0", srv.Port()), "w")
	time.Sleep(300 * time.Millisecond) // a few attempts
	if connected(wrong)() {
		t.Error("connected with a wrong password")
	}
}

// A URL with master_name goes through Sentinel: the fleet asks the
// sentinel for the master (which requires a password, given in the
// query) and exchanges through it; the password is never shown.
func TestFleetSentinel(t *testing.T) {
	master := startRedis(t, "--requirepass", "master-pw-31")
	sentinel := fleettest.StartSentinel(t, master, "edge-master", "master-pw-31")
	url := fmt.Sprintf("redis://127.0.0.1:%d/0?master_name=edge-master&password=master-pw-31", sentinel.Port())
	a := exchanges(t, url)
	if _, ok := a.client.(*redis.Client); !ok {
		t.Errorf("client %T, want a failover *redis.Client", a.client)
	}
	if st := a.Status().Store; strings.Contains(st, "master-pw-31") {
		t.Errorf("store shown as %q, with the password", st)
	}
	// the entries are in the master
	if n := master.Client("master-pw-31").HLen(ctx(t), DefaultPrefix+":verdicts").Val(); n != 1 {
		t.Errorf("%d entries in the master, want 1", n)
	}
}

// A URL with cluster=true (one seed) or several addr goes through
// Cluster.
func TestFleetCluster(t *testing.T) {
	srv := fleettest.StartCluster(t)
	a := exchanges(t, fmt.Sprintf("redis://127.0.0.1:%d?cluster=true", srv.Port()))
	if _, ok := a.client.(*redis.ClusterClient); !ok {
		t.Errorf("client %T, want a *redis.ClusterClient", a.client)
	}
	f, err := New(Config{URL: fmt.Sprintf("redis://127.0.0.1:%d?addr=127.0.0.1:%d", srv.Port(), srv.Port()), Secret: secret, Instance: "c"})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, ok := f.client.(*redis.ClusterClient); !ok {
		t.Errorf("client %T for several addresses, want a *redis.ClusterClient", f.client)
	}
}

// Bad URLs are refused with an error that says why and shows no
// password.
func TestFleetURLErrors(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"redis://h:1?cluster=maybe", "cluster"},
		{"redis://h:1?cluster=true&master_name=m", "do not go together"},
		{"redis://h:1?master_name=", "master_name"},
		{"redis://h:1/3?cluster=true", "database 0"},
		{"redis://h:1?master_name=m&password=pw-secret-9&bogus=1", "bogus"},
		{"redis://u:pw-secret-9@h:1?addr=nohostport", "addr"},
		{"memcached://h:1", "scheme"},
	} {
		_, err := New(Config{URL: tc.url, Secret: secret, Instance: "x"})
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "pw-secret-9") {
			t.Errorf("%s: %v, want an error naming %q without the password", tc.url, err, tc.want)
		}
	}
}
