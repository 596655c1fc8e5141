// Package version holds the build's identity, stamped at link time with
// -ldflags "-X github.com/syncd/syncd/internal/version.Version=… -X …Commit=…".
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set by the linker; the defaults describe an unstamped development build.
var (
	Version = "dev"
	Commit  = ""
)

// CommitOrVCS returns the stamped commit, or the VCS revision Go recorded in
// the binary when the build was not stamped.
func CommitOrVCS() string {
	if Commit != "" {
		return Commit
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}

// String is the one line `syncd version` prints.
func String() string {
	return fmt.Sprintf("syncd %s (commit %s, %s)", Version, CommitOrVCS(), runtime.Version())
}
