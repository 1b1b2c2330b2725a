#!/usr/bin/env bash
# Build the p2preg container image without pulling any base image, reproducibly:
#   1. a Debian bookworm rootfs from Debian's packages (mmdebstrap: python3, CA certificates,
#      tzdata) with a "p2preg" user (uid/gid 10001) and /var/lib/p2preg owned by it;
#   2. the project's wheel and the locked dependency wheels (deploy/image/requirements.txt,
#      checked against their sha256) installed into /usr/local/lib/python3.11/dist-packages,
#      byte-compiled (unchecked-hash .pyc, so a read-only root filesystem starts fast);
#   3. deploy/image/ocibuild.py: two gzip'd layers, config and manifest with OCI labels
#      (source, version, revision), every timestamp SOURCE_DATE_EPOCH, files sorted;
#   4. dist/p2preg-VERSION.oci.tar (an oci-archive) and, unless IMAGE_BUILD_NO_LOAD=1,
#      localhost/p2preg:VERSION in local container storage (skopeo copy).
# Prints the image's manifest digest last. Two builds of the same commit (same Debian package
# versions) give the same digest; dist/p2preg-VERSION.packages lists those versions.
#
# Environment: SOURCE_DATE_EPOCH (default: the last commit's time), IMAGE_BUILD_CACHE
# (downloaded .debs and wheels; default dist/.cache), IMAGE_BUILD_DIST (output directory;
# default dist), IMAGE_BUILD_NO_LOAD=1 (do not copy into local container storage),
# DEBIAN_MIRROR (default deb.debian.org; a snapshot.debian.org URL pins the Debian packages),
# IMAGE_BUILD_SOURCE (the source label),
# PYTHON (a CPython 3.11 with pip; default .venv/bin/python). Needs root (mmdebstrap --mode=root).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

PYTHON=${PYTHON:-$repo/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$pyver" != 3.11 ]; then
  echo "build.sh: needs CPython 3.11 (the image's Python) to byte-compile; got $pyver" >&2
  exit 2
fi
command -v mmdebstrap >/dev/null || { echo "build.sh: mmdebstrap not installed" >&2; exit 2; }

version=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$revision" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  revision="$revision-dirty"
fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
source_url=${IMAGE_BUILD_SOURCE:-https://github.com/p2preg/p2preg}
cache=${IMAGE_BUILD_CACHE:-$repo/dist/.cache}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
dist=${IMAGE_BUILD_DIST:-dist}
mkdir -p "$cache/debs" "$cache/wheels" "$cache/build-wheels" "$dist"
cache=$(cd "$cache" && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/p2preg-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
export TZ=UTC LC_ALL=C.UTF-8 PYTHONHASHSEED=0
step() { echo "build.sh: [${SECONDS}s] $*" >&2; }

step "Debian rootfs (mmdebstrap)"
# 1. Debian rootfs. Downloaded .debs are kept in the cache (the second build of a run only
#    unpacks); the image holds none of them.
packages=python3,ca-certificates,tzdata,base-files,base-passwd,dash,coreutils,libc-bin,diffutils,findutils,sed,grep,perl-base,debconf
mmdebstrap --mode=root --variant=custom --quiet --include="$packages" \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --skip=essential/unlink \
  --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
  --setup-hook="sync-in $cache/debs /var/cache/apt/archives/" \
  --customize-hook="sync-out /var/cache/apt/archives $cache/debs" \
  --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old' \
  --customize-hook='echo "p2preg:x:10001:10001:p2preg:/var/lib/p2preg:/bin/false" >> "$1"/etc/passwd' \
  --customize-hook='echo "p2preg:x:10001:" >> "$1"/etc/group' \
  --customize-hook='chroot "$1" dpkg-query -W -f "\${Package} \${Version}\n" > "$1"/.packages' \
  --customize-hook="copy-out /.packages $work" \
  --customize-hook='rm "$1"/.packages' \
  bookworm "$work/rootfs.tar" "deb $mirror bookworm main" "deb $mirror bookworm-updates main"
sort "$work/.packages" > "$dist/p2preg-$version.packages"

step "wheels"
# 2. The application: the project's wheel and the locked wheels, nothing resolved at build time.
# Wheels already in the cache with the locked hash are not fetched again.
missing() { "$PYTHON" deploy/image/wheelcache.py "$1" "$2"; }
if ! missing deploy/image/requirements.txt "$cache/wheels"; then
  "$PYTHON" -m pip download -q --no-deps --require-hashes --only-binary=:all: --implementation cp \
    --python-version 3.11 --abi cp311 \
    $(for v in 5 12 17 24 27 28 31 34 35 36; do echo "--platform manylinux_2_${v}_x86_64"; done) \
    --platform manylinux2014_x86_64 --platform linux_x86_64 \
    -r deploy/image/requirements.txt -d "$cache/wheels"
fi
if ! missing deploy/image/build-requirements.txt "$cache/build-wheels"; then
  "$PYTHON" -m pip download -q --no-deps --require-hashes --only-binary=:all: \
    -r deploy/image/build-requirements.txt -d "$cache/build-wheels"
fi
"$PYTHON" -m pip wheel -q --no-deps --no-index --find-links "$cache/build-wheels" -w "$work/wheel" .
site="$work/stage/usr/local/lib/python3.11/dist-packages"
"$PYTHON" -m pip install -q --no-index --no-compile --no-warn-script-location \
  --find-links "$cache/wheels" --find-links "$work/wheel" --target "$site" "p2preg==$version" \
  || { echo "build.sh: a dependency is missing from deploy/image/requirements.txt? run deploy/image/lock.sh" >&2; exit 1; }
rm -rf "$site/bin"
find "$site" -name '*.dist-info' -exec rm -f {}/RECORD {}/INSTALLER {}/REQUESTED {}/direct_url.json \;
step "byte-compile"
"$PYTHON" -m compileall -q -j 1 --invalidation-mode unchecked-hash -d /usr/local/lib/python3.11/dist-packages "$site" >/dev/null
mkdir -p "$work/stage/usr/local/bin" "$work/stage/var/lib/p2preg"
printf '%s\n' '#!/usr/bin/python3' 'import sys' 'from p2preg.cli import main' 'sys.exit(main())' \
  > "$work/stage/usr/local/bin/p2preg"
chmod 755 "$work/stage/usr/local/bin/p2preg"

step "layers"
# 3. Layers, config, manifest, archive.
archive="$dist/p2preg-$version.oci.tar"
summary=$("$PYTHON" deploy/image/ocibuild.py --rootfs "$work/rootfs.tar" --stage "$work/stage" \
  --layout "$work/layout" --archive "$archive" --epoch "$SOURCE_DATE_EPOCH" \
  --version "$version" --revision "$revision" --source "$source_url")
digest=$(echo "$summary" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["manifest"])')
echo "$summary" > "$dist/p2preg-$version.json"

step "load"
# 4. Local container storage.
if [ "${IMAGE_BUILD_NO_LOAD:-0}" != 1 ]; then
  skopeo copy -q "oci-archive:$archive:$version" "containers-storage:localhost/p2preg:$version" >&2
fi
echo "built localhost/p2preg:$version $archive $(echo "$summary" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["compressed_bytes"])') bytes compressed" >&2
echo "$digest"
