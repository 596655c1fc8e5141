// Package orbsig verifies and produces the signatures Orb puts on its webhook
// deliveries (X-Orb-Timestamp and X-Orb-Signature), in the manner of stripe-go's webhook package.
package orbsig

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"time"
)

// Header names Orb sends with every delivery.
const (
	TimestampHeader = "X-Orb-Timestamp"
	SignatureHeader = "X-Orb-Signature"
)

// DefaultTolerance is used when Verify is given a tolerance of zero or less.
const DefaultTolerance = 5 * time.Minute

// timestampLayout is how Orb writes X-Orb-Timestamp: UTC, milliseconds, no zone.
const timestampLayout = "2006-01-02T15:04:05.000"

// The errors Verify returns. None of their messages carries a secret or a
// signature, so they may be logged and returned to the sender as they are.
var (
	ErrNoSignature       = errors.New("orbsig: missing " + SignatureHeader + " header")
	ErrNoTimestamp       = errors.New("orbsig: missing " + TimestampHeader + " header")
	ErrInvalidTimestamp  = errors.New("orbsig: " + TimestampHeader + " is not a valid timestamp")
	ErrTooOld            = errors.New("orbsig: timestamp is older than the tolerance")
	ErrTooNew            = errors.New("orbsig: timestamp is further in the future than the tolerance")
	ErrNoValidSignature  = errors.New("orbsig: no signature matches any configured secret")
	ErrUnsupportedScheme = errors.New("orbsig: " + SignatureHeader + " has no v1 signature")
)

// Verify checks that body was signed by Orb with one of secrets, and that the
// signed timestamp lies within tolerance of now, in the past or in the future.
// Several X-Orb-Signature values (repeated header lines and/or comma-separated)
// are accepted if any v1 value matches any secret, which is what secret
// rotation needs. Empty secrets are ignored: an empty HMAC key is no secret.
//
// The signature is checked before the timestamp, so ErrTooOld and ErrTooNew
// are only reported for deliveries that are otherwise authentic (a clock or
// a replay problem, not a forgery).
func Verify(body []byte, header http.Header, secrets []string, tolerance time.Duration, now time.Time) error {
	timestamp := firstNonEmpty(header.Values(TimestampHeader))
	if timestamp == "" {
		return ErrNoTimestamp
	}
	signatures, err := v1Signatures(header.Values(SignatureHeader))
	if err != nil {
		return err
	}
	signedAt, err := parseTimestamp(timestamp)
	if err != nil {
		return ErrInvalidTimestamp
	}
	if !anyMatch(body, timestamp, signatures, secrets) {
		return ErrNoValidSignature
	}
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	if now.Sub(signedAt) > tolerance {
		return ErrTooOld
	}
	if signedAt.Sub(now) > tolerance {
		return ErrTooNew
	}
	return nil
}

// Sign returns the X-Orb-Timestamp and X-Orb-Signature values Orb would send
// for body signed with secret at ts.
func Sign(body []byte, secret string, ts time.Time) (timestamp, signature string) {
	timestamp = ts.UTC().Format(timestampLayout)
	return timestamp, "v1=" + hex.EncodeToString(mac(body, timestamp, secret))
}

// mac is HMAC-SHA256 over "v1:" + timestamp + ":" + body. The key is the
// secret string's own bytes, "whsec_" prefix included: Orb's official SDKs do
// exactly that (orb-billing for Node, src/resources/webhooks.ts, parseSecret:
// Buffer.from(secret, 'utf-8')), unlike Svix-style secrets, which are
// base64-decoded after the prefix is stripped.
func mac(body []byte, timestamp, secret string) []byte {
	h := hmac.New(sha256.New, []byte(secret))
	h.Write([]byte("v1:"))
	h.Write([]byte(timestamp))
	h.Write([]byte(":"))
	h.Write(body)
	return h.Sum(nil)
}

func anyMatch(body []byte, timestamp string, signatures [][]byte, secrets []string) bool {
	for _, secret := range secrets {
		if secret == "" {
			continue
		}
		expected := mac(body, timestamp, secret)
		for _, sig := range signatures {
			if hmac.Equal(expected, sig) {
				return true
			}
		}
	}
	return false
}

// v1Signatures collects the decoded v1 values from every X-Orb-Signature
// value. A v1 value that is not hex can never match, so it is dropped, but it
// still shows that the sender used the v1 scheme.
func v1Signatures(values []string) ([][]byte, error) {
	var sigs [][]byte
	sawAny, sawV1 := false, false
	for _, value := range values {
		for item := range strings.SplitSeq(value, ",") {
			item = strings.TrimSpace(item)
			if item == "" {
				continue
			}
			sawAny = true
			scheme, encoded, ok := strings.Cut(item, "=")
			if !ok || strings.TrimSpace(scheme) != "v1" {
				continue
			}
			sawV1 = true
			if sig, err := hex.DecodeString(strings.TrimSpace(encoded)); err == nil {
				sigs = append(sigs, sig)
			}
		}
	}
	switch {
	case !sawAny:
		return nil, ErrNoSignature
	case !sawV1:
		return nil, ErrUnsupportedScheme
	}
	return sigs, nil
}

// parseTimestamp reads Orb's zone-less UTC form and, to be lenient about
// future changes, RFC 3339 with a zone; fractional seconds of any length (or
// none) are accepted by both.
func parseTimestamp(s string) (time.Time, error) {
	var err error
	for _, layout := range []string{"2006-01-02T15:04:05", time.RFC3339Nano, "2006-01-02 15:04:05"} {
		var t time.Time
		if t, err = time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, err
}

func firstNonEmpty(values []string) string {
	for _, v := range values {
		if v = strings.TrimSpace(v); v != "" {
			return v
		}
	}
	return ""
}
