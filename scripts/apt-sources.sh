# Sourced (not run) by scripts/setup-host and scripts/update-inputs-lock.
#
# - host_source_uri / mirror_uri: the Debian mirror the machine's own apt sources name (we
#   never hard-code one);
# - suite_apt_prepare / suite_apt_opts: a separate apt configuration for the board inputs
#   of another Debian suite (column 5 of scripts/inputs.lock, e.g. `trixie`). It lives in
#   /var/lib/basalt/apt/<suite> with its own sources.list, package lists, cache and (empty)
#   dpkg status, and never touches the host's sources, lists or installed packages: apt
#   only reads package indexes and downloads .debs through it.
#
# The caller defines `die MESSAGE`.

# The URI of the first of the host's apt sources (/etc/apt/sources.list.d/debian.sources,
# deb822, then /etc/apt/sources.list, one-line) that names `suite`; empty when none does.
host_source_uri() {
    local suite="$1" uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri="$(awk -v want="$suite" '
            /^URIs:/ { u=$2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == want && u != "") { print u; exit } }
            /^$/ { u="" }' /etc/apt/sources.list.d/debian.sources)"
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        # `deb [options] URI suite components`: the options may be absent.
        uri="$(awk -v want="$suite" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == want) { print $i; exit }
            }' /etc/apt/sources.list)"
    fi
    printf '%s\n' "$uri"
}

# The Debian mirror the host's bookworm sources use (an error when they name none).
mirror_uri() {
    local uri
    uri="$(host_source_uri bookworm)"
    [ -n "$uri" ] || die "no apt source for Debian bookworm found in /etc/apt/sources.list{,.d/debian.sources}"
    printf '%s\n' "$uri"
}

# The folder of the separate apt configuration for `suite`.
suite_apt_dir() {
    printf '/var/lib/basalt/apt/%s\n' "$1"
}

# Fills the array `apt_opts` with the options that point apt-get and apt-cache at the
# configuration of `suite` (empty for the host's own sources: an empty suite).
suite_apt_opts() {
    local suite="$1" d
    apt_opts=()
    [ -n "$suite" ] || return 0
    d="$(suite_apt_dir "$suite")"
    apt_opts=(
        -o "Dir::Etc::SourceList=$d/etc/sources.list"
        -o "Dir::Etc::SourceParts=$d/empty"
        -o "Dir::Etc::Preferences=$d/empty/none"
        -o "Dir::Etc::PreferencesParts=$d/empty"
        -o "Dir::State::Lists=$d/lists"
        -o "Dir::State::status=$d/status"
        -o "Dir::Cache=$d/cache"
        -o "APT::Architectures::=amd64"
        -o "APT::Architectures::=arm64"
        -o "Acquire::Languages=none"
    )
}

# Creates (or brings up to date) the configuration of `suite`: the main archive of the
# host's mirror, and the matching -security archive when the host's sources name one for
# bookworm. Idempotent; runs no apt command. Needs root.
suite_apt_prepare() {
    local suite="$1" d mirror security wanted
    [[ "$suite" =~ ^[a-z][a-z0-9-]*$ ]] || die "bad Debian suite name: $suite"
    d="$(suite_apt_dir "$suite")"
    mirror="$(mirror_uri)"
    security="$(host_source_uri bookworm-security)"
    wanted="# Written by Basalt's scripts/setup-host: board inputs from Debian $suite (scripts/inputs.lock).
deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main"
    if [ -n "$security" ]; then
        wanted="$wanted
deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $security $suite-security main"
    fi
    mkdir -p "$d/etc" "$d/empty" "$d/lists/partial" "$d/cache/archives/partial"
    [ -f "$d/status" ] || : > "$d/status"
    if [ ! -f "$d/etc/sources.list" ] || [ "$(cat "$d/etc/sources.list")" != "$wanted" ]; then
        printf '%s\n' "$wanted" > "$d/etc/sources.list.tmp"
        mv "$d/etc/sources.list.tmp" "$d/etc/sources.list"
    fi
}
