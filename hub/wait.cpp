// hub/wait.cpp — cogent::wait(objects, t, count): links on every object, one park.
#include "hub/wait.hpp"

#include <algorithm>
#include <stdexcept>

namespace cogent {
namespace {

// wait_state is one wait() call's record of the objects that became ready.
struct wait_state {
  std::vector<std::size_t> order;  // positions, in the order they became ready (reserved: no allocation)
  std::vector<char> seen;          // per position: in `order` already
  std::size_t want = 0;
  bool gone = false;  // an event or async_result was destroyed under the wait
  detail::wait_list wake;

  void record(std::size_t i) noexcept {
    if (seen[i] == 0) {
      seen[i] = 1;
      order.push_back(i);
      if (order.size() == want) {
        wake.notify_one();
      }
    }
  }
};

struct object_link : detail::ready_link {
  wait_state* st = nullptr;
  std::size_t index = 0;
};

void object_ready(detail::ready_link* l, bool gone) noexcept {
  auto* o = static_cast<object_link*>(l);
  if (gone) {
    if (o->st->order.size() < o->st->want) {  // (already answered: the wait returns what it has)
      o->st->gone = true;
      o->st->wake.notify_one();
    }
  } else {
    o->st->record(o->index);
  }
}

}  // namespace

bool waitable::ready() const {
  return _task ? _task.ready() : _ready(_object);
}

std::vector<std::size_t> wait(const std::vector<waitable>& objects, timeout_duration t, std::size_t count) {
  for (const waitable& o : objects) {
    if (!o._task && o._links == nullptr) {
      throw std::logic_error("cogent::wait(): empty task handle in the list");
    }
  }
  hub::throw_if_interrupted();
  wait_state st;
  st.want = std::min(count, objects.size());
  st.order.reserve(objects.size());
  st.seen.assign(objects.size(), 0);
  for (std::size_t i = 0; i < objects.size(); ++i) {
    if (objects[i].ready()) {
      st.record(i);
    }
  }
  clock::time_point deadline = deadline_after(t);
  if (st.order.size() < st.want && !detail::deadline_passed(deadline)) {
    std::vector<object_link> links(objects.size());
    std::vector<std::size_t> task_links(objects.size(), 0);
    struct unlink_all {
      const std::vector<waitable>& objects;
      std::vector<object_link>& links;
      std::vector<std::size_t>& task_links;
      ~unlink_all() {
        for (std::size_t i = 0; i < objects.size(); ++i) {
          if (links[i].linked) {
            objects[i]._links->remove(links[i]);  // linked: the object is alive
          }
          if (task_links[i] != 0) {
            objects[i]._task.unlink(task_links[i]);
          }
        }
      }
    } guard{objects, links, task_links};
    for (std::size_t i = 0; i < objects.size(); ++i) {
      if (st.seen[i] != 0) {
        continue;
      }
      if (objects[i]._task) {
        // Not observing: the caller holds the task and decides who looks at its error.
        task_links[i] = objects[i]._task.link([&st, i](const task_base&) { st.record(i); }, false);
      } else {
        links[i].fire = &object_ready;
        links[i].st = &st;
        links[i].index = i;
        objects[i]._links->add(links[i]);
      }
    }
    while (st.order.size() < st.want && !st.gone) {
      if (!st.wake.wait(deadline)) {
        break;  // `t` passed
      }
    }
    if (st.gone) {
      throw hub_error("cogent::wait(): an event or async_result was destroyed while this fiber waited on it");
    }
  }
  if (st.order.size() > st.want) {
    st.order.resize(st.want);
  }
  return std::move(st.order);
}

}  // namespace cogent
