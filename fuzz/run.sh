#!/usr/bin/env bash
# `make fuzz`: builds the fuzz targets, runs each for FUZZ_SECONDS (default 60) and
# prints the executions per target. Exits non-zero if a target found a crash; its
# input is then in fuzz/artifacts/<target>/ (reproduce: cargo fuzz run <target> FILE).
#
# Toolchain: nightly when rustup has one (`cargo +nightly fuzz`), else the stable
# toolchain with RUSTC_BOOTSTRAP=1, since a fresh machine may have only that.
# Flags: release build with debug assertions (integer overflow is a crash), no
# address sanitizer (the code under test is safe Rust); FUZZ_FLAGS overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.tools/bin:$PATH"

seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-body plan config classify}
read -r -a flags <<<"${FUZZ_FLAGS:--O -a -s none}"
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    cargo=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    cargo=(cargo fuzz)
fi

dict_of() {
    case "$1" in
        body | config | classify) echo "-dict=fuzz/dicts/json.dict" ;;
    esac
}

"${cargo[@]}" build "${flags[@]}"
summary=()
failed=0
for target in $targets; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    log="fuzz/artifacts/$target/last-run.log"
    echo "fuzzing $target for ${seconds}s ..."
    # shellcheck disable=SC2046 # the dictionary flag is one word or none
    if "${cargo[@]}" run "${flags[@]}" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 \
        $(dict_of "$target") >"$log" 2>&1; then
        result=ok
    else
        result=CRASH
        failed=1
        grep -E "panicked|ERROR: libFuzzer|Test unit written" "$log" | head -5 || true
    fi
    execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
    summary+=("$(printf '%-10s %-6s %14s executions  %6s corpus inputs' "$target" "$result" "${execs:-?}" "$corpus")")
done
echo
echo "fuzz summary (${seconds}s per target; logs in fuzz/artifacts/<target>/last-run.log):"
printf '  %s\n' "${summary[@]}"
exit "$failed"
