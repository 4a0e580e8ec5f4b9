// Run-length view of a label row: maximal stretches of consecutive pixels with one valid label.
// Building it once per image lets per-channel loops over contiguous runs vectorise, instead of a
// scattered per-pixel accumulation. Pixels whose label is outside [0, num_classes) are in no run.
#pragma once

#include <cstdint>
#include <vector>

#include <c10/util/Exception.h>

namespace fastseg::cpu {

struct LabelRun {
  int64_t start;
  int64_t length;
  int64_t label;
};

// Runs of `labels[0..size)`. A label outside [0, num_classes) other than ignore_index raises a
// ValueError when `strict`; otherwise it is skipped like ignore_index.
inline std::vector<LabelRun> label_runs(const int64_t* labels, int64_t size, int64_t num_classes,
                                        int64_t ignore_index, bool strict) {
  std::vector<LabelRun> runs;
  for (int64_t p = 0; p < size; ++p) {
    const int64_t label = labels[p];
    if (label < 0 || label >= num_classes) {
      TORCH_CHECK_VALUE(!strict || label == ignore_index, "labels holds ", label, ", outside [0, ",
                        num_classes, ") and not ignore_index=", ignore_index);
      continue;
    }
    if (!runs.empty() && runs.back().label == label && runs.back().start + runs.back().length == p) {
      ++runs.back().length;
    } else {
      runs.push_back({p, 1, label});
    }
  }
  return runs;
}

// Sum of x[0..n) in the accumulation type, with eight independent partial sums so the compiler
// vectorises it.
template <typename acc_t, typename scalar_t>
inline acc_t contiguous_sum(const scalar_t* x, int64_t n) {
  acc_t part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) part[j] += static_cast<acc_t>(x[i + j]);
  }
  acc_t sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; i < n; ++i) sum += static_cast<acc_t>(x[i]);
  return sum;
}

}  // namespace fastseg::cpu
