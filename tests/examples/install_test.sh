#!/usr/bin/env bash
# tests/examples/install_test.sh BUILD_DIR SOURCE_DIR — `meson install` into a scratch DESTDIR,
# then build two programs the way a user would, with nothing but `pkg-config --cflags --libs`
# (cogent, and cogent-monkey for a patch_all() program), and run them against the installed
# libraries. Registered as the meson test `install`.
set -euo pipefail
build=$1
src=$2
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
meson install -C "$build" --destdir "$dest" --no-rebuild --quiet >/dev/null
pc=$(dirname "$(find "$dest" -name cogent.pc | head -1)")
[ -f "$pc/cogent.pc" ] || { echo "FAIL: no cogent.pc installed" >&2; exit 1; }
[ -f "$pc/cogent-monkey.pc" ] || { echo "FAIL: no cogent-monkey.pc installed" >&2; exit 1; }
export PKG_CONFIG_PATH=$pc PKG_CONFIG_SYSROOT_DIR=$dest
libdir=$(dirname "$(find "$dest" -name 'libcogent.so*' | head -1)")

# 1. The hub tour from the README, against the installed headers and library.
g++ -std=c++20 -Wall -Wextra -Werror -o "$dest/tour" "$src/examples/02_auto_switch.cpp" \
  $(pkg-config --cflags --libs cogent)
LD_LIBRARY_PATH=$libdir "$dest/tour" | grep -q '^g3 4' || { echo "FAIL: installed 02_auto_switch" >&2; exit 1; }
echo "ok: 02_auto_switch built with pkg-config cogent"

# 2. patch_all(): ten fibers each ::usleep(100 ms) overlap (about 0.1 s, not 1 s).
cat >"$dest/monkey.cpp" <<'CPP'
#include <unistd.h>
#include <chrono>
#include <cstdio>
#include <vector>
#include "hub/hub.hpp"
#include "monkey/monkey.hpp"
int main() {
  cogent::monkey::patch_all();
  auto t0 = std::chrono::steady_clock::now();
  std::vector<cogent::task<void>> ts;
  for (int i = 0; i < 10; ++i) ts.push_back(cogent::spawn([] { ::usleep(100000); }));
  cogent::joinall(ts);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%.2f\n", s);
  return s < 0.5 ? 0 : 1;
}
CPP
g++ -std=c++20 -Wall -Wextra -Werror -o "$dest/monkey" "$dest/monkey.cpp" \
  $(pkg-config --cflags --libs cogent-monkey)
LD_LIBRARY_PATH=$libdir "$dest/monkey" >/dev/null || { echo "FAIL: installed cogent-monkey did not overlap the sleeps" >&2; exit 1; }
echo "ok: patch_all() program built with pkg-config cogent-monkey"
