package orbsig_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/syncd/syncd/internal/orbsig"
)

const (
	secret    = "whsec_7cV1eU3y0QmZp8o2LrT4kN9sXbA6"
	timestamp = "2024-03-27T15:42:29.551"
)

var signedAt = time.Date(2024, 3, 27, 15, 42, 29, 551e6, time.UTC)

func fixture(t testing.TB) []byte {
	t.Helper()
	body, err := os.ReadFile("testdata/orb_customer_balance_transaction_created.json")
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// expectedSignature computes the signature independently of the package.
func expectedSignature(body []byte, key string) string {
	h := hmac.New(sha256.New, []byte(key))
	h.Write([]byte("v1:" + timestamp + ":"))
	h.Write(body)
	return "v1=" + hex.EncodeToString(h.Sum(nil))
}

func headers(ts string, sigs ...string) http.Header {
	h := http.Header{}
	if ts != "" {
		h.Set(orbsig.TimestampHeader, ts)
	}
	for _, s := range sigs {
		h.Add(orbsig.SignatureHeader, s)
	}
	return h
}

func TestSignMatchesIndependentHMAC(t *testing.T) {
	body := fixture(t)
	ts, sig := orbsig.Sign(body, secret, signedAt)
	if ts != timestamp {
		t.Errorf("timestamp = %q, want %q", ts, timestamp)
	}
	if want := expectedSignature(body, secret); sig != want {
		t.Errorf("signature = %q, want %q", sig, want)
	}
}

func TestVerify(t *testing.T) {
	body := fixture(t)
	good := expectedSignature(body, secret)
	other := expectedSignature(body, "whsec_someone_else")
	tampered := append([]byte(nil), body...)
	tampered[len(tampered)/2] ^= 1

	tests := []struct {
		name    string
		body    []byte
		header  http.Header
		secrets []string
		now     time.Time
		want    error
	}{
		{"valid", body, headers(timestamp, good), []string{secret}, signedAt, nil},
		{"valid near the edge of the past", body, headers(timestamp, good), []string{secret}, signedAt.Add(5 * time.Minute), nil},
		{"valid near the edge of the future", body, headers(timestamp, good), []string{secret}, signedAt.Add(-5 * time.Minute), nil},
		{"wrong secret", body, headers(timestamp, good), []string{"whsec_wrong"}, signedAt, orbsig.ErrNoValidSignature},
		{"tampered body", tampered, headers(timestamp, good), []string{secret}, signedAt, orbsig.ErrNoValidSignature},
		{"timestamp not the signed one", body, headers("2024-03-27T15:42:30.551", good), []string{secret}, signedAt, orbsig.ErrNoValidSignature},
		{"no secrets", body, headers(timestamp, good), nil, signedAt, orbsig.ErrNoValidSignature},
		{"empty secret is not a key", body, headers(timestamp, expectedSignature(body, "")), []string{""}, signedAt, orbsig.ErrNoValidSignature},
		{"missing signature", body, headers(timestamp), []string{secret}, signedAt, orbsig.ErrNoSignature},
		{"blank signature", body, headers(timestamp, " , "), []string{secret}, signedAt, orbsig.ErrNoSignature},
		{"missing timestamp", body, headers("", good), []string{secret}, signedAt, orbsig.ErrNoTimestamp},
		{"missing both", body, http.Header{}, []string{secret}, signedAt, orbsig.ErrNoTimestamp},
		{"garbage timestamp", body, headers("yesterday", good), []string{secret}, signedAt, orbsig.ErrInvalidTimestamp},
		{"stale", body, headers(timestamp, good), []string{secret}, signedAt.Add(5*time.Minute + time.Millisecond), orbsig.ErrTooOld},
		{"future", body, headers(timestamp, good), []string{secret}, signedAt.Add(-5*time.Minute - time.Millisecond), orbsig.ErrTooNew},
		{"only other schemes", body, headers(timestamp, "v0="+strings.TrimPrefix(good, "v1="), "v2=abc"), []string{secret}, signedAt, orbsig.ErrUnsupportedScheme},
		{"v1 not hex", body, headers(timestamp, "v1=zz"), []string{secret}, signedAt, orbsig.ErrNoValidSignature},
		{"one of several header lines", body, headers(timestamp, other, "v0=00", good), []string{secret}, signedAt, nil},
		{"one of a comma-separated list", body, headers(timestamp, other+", v2=ff,"+good), []string{secret}, signedAt, nil},
		{"rotation: old secret still signs", body, headers(timestamp, good), []string{"whsec_new", secret}, signedAt, nil},
		{"rotation: new secret signs", body, headers(timestamp, other), []string{secret, "whsec_someone_else"}, signedAt, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := orbsig.Verify(tt.body, tt.header, tt.secrets, 5*time.Minute, tt.now)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
			if err != nil {
				msg := err.Error()
				for _, s := range append([]string{good, strings.TrimPrefix(good, "v1=")}, tt.secrets...) {
					if s != "" && strings.Contains(msg, s) {
						t.Errorf("error %q leaks %q", msg, s)
					}
				}
			}
		})
	}
}

func TestVerifyTimestampForms(t *testing.T) {
	body := fixture(t)
	for _, ts := range []string{
		"2024-03-27T15:42:29.551",
		"2024-03-27T15:42:29.551000",
		"2024-03-27T15:42:29",
		"2024-03-27T15:42:29.551Z",
		"2024-03-27T16:42:29.551+01:00",
		"2024-03-27T15:42:29.551123456+00:00",
	} {
		t.Run(ts, func(t *testing.T) {
			h := hmac.New(sha256.New, []byte(secret))
			h.Write([]byte("v1:" + ts + ":"))
			h.Write(body)
			sig := "v1=" + hex.EncodeToString(h.Sum(nil))
			if err := orbsig.Verify(body, headers(ts, sig), []string{secret}, time.Minute, signedAt); err != nil {
				t.Fatalf("Verify: %v", err)
			}
		})
	}
}

func TestVerifyDefaultTolerance(t *testing.T) {
	body := fixture(t)
	h := headers(timestamp, expectedSignature(body, secret))
	if err := orbsig.Verify(body, h, []string{secret}, 0, signedAt.Add(4*time.Minute)); err != nil {
		t.Errorf("within the default tolerance: %v", err)
	}
	if err := orbsig.Verify(body, h, []string{secret}, 0, signedAt.Add(6*time.Minute)); !errors.Is(err, orbsig.ErrTooOld) {
		t.Errorf("beyond the default tolerance: %v", err)
	}
}

func FuzzVerify(f *testing.F) {
	body := fixture(f)
	f.Add(body, timestamp, expectedSignature(body, secret), secret)
	f.Add([]byte("{}"), "2024-03-27T15:42:29Z", "v1=,v0=00", "")
	f.Add([]byte(""), "", "v1", "k")
	f.Fuzz(func(t *testing.T, body []byte, ts, sig, key string) {
		h := http.Header{}
		h.Set(orbsig.TimestampHeader, ts)
		h.Set(orbsig.SignatureHeader, sig)
		_ = orbsig.Verify(body, h, []string{key}, time.Minute, signedAt)

		// Whatever the body and secret, what Sign produces verifies.
		if key == "" {
			return
		}
		signedTS, signature := orbsig.Sign(body, key, signedAt)
		h.Set(orbsig.TimestampHeader, signedTS)
		h.Add(orbsig.SignatureHeader, signature)
		if err := orbsig.Verify(body, h, []string{key}, time.Minute, signedAt); err != nil {
			t.Fatalf("own signature rejected: %v", err)
		}
	})
}
