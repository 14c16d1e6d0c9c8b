package main

import (
	"fmt"
	"time"
)

// backupScenario is the name of the backup upstreams scenario: every
// primary's port closed for the outage, with a fourth backend declared
// as `backup`.
const backupScenario = "backup-all-down"

// BackupResult is what the backup scenario measures: the backup's share
// of the successful answers to requests sent during the outage (all of
// them, once the primaries are out) and after it (none, once they are
// back), and when it last answered a request sent after the outage:
// the primaries had taken the traffic back by then.
type BackupResult struct {
	Share       *float64 `json:"share"`
	ShareAfter  *float64 `json:"share_after"`
	LastAfterMS *float64 `json:"last_after_ms,omitempty"`
}

// backupSide measures the backup scenario from the client's records (the
// X-Backend header names the backend that answered).
func backupSide(rr *RunResult, in analysisInput) {
	name := in.backup.Name()
	var win, winBackup, after, afterBackup int
	var last time.Time
	for _, r := range in.records {
		if r.Status < 200 || r.Status >= 500 {
			continue
		}
		isBackup := r.Backend == name
		switch {
		case r.Intended.Before(in.faultStart):
		case r.Intended.Before(in.faultEnd):
			win++
			if isBackup {
				winBackup++
			}
		default:
			after++
			if isBackup {
				afterBackup++
				if r.Intended.After(last) {
					last = r.Intended
				}
			}
		}
	}
	br := &BackupResult{Share: ratio(winBackup, win), ShareAfter: ratio(afterBackup, after)}
	if !last.IsZero() {
		br.LastAfterMS = ptr(ms(last.Sub(in.faultEnd)))
	}
	rr.Backup = br
}

// backupTargets are the backup scenario's targets: no client failure,
// the backup takes all of the outage's traffic, and the primaries take
// it back within a second of recovering.
func backupTargets(b *RunResult) []target {
	if b == nil || b.Error != "" || b.Backup == nil {
		return nil
	}
	share := func(v *float64) string {
		if v == nil {
			return "n/a"
		}
		return fmt.Sprintf("%.1f%%", *v*100)
	}
	back := b.Backup.LastAfterMS == nil || *b.Backup.LastAfterMS <= 1000
	return []target{
		{"Backups, every primary down: 0 client failures", fmt.Sprintf("%d of %d", b.Overall.Failures, b.Overall.Requests), ptr(b.Overall.Failures == 0)},
		{"Backups, every primary down: the backup answers 100% of the outage's requests", share(b.Backup.Share), ptr(b.Backup.Share != nil && *b.Backup.Share == 1)},
		{"Backups: the primaries take the traffic back within 1 s of recovering",
			fmt.Sprintf("backup's last answer %s after the outage, %s of the answers after it", fmtMSOr(b.Backup.LastAfterMS, "never"), share(b.Backup.ShareAfter)), ptr(back)},
	}
}
