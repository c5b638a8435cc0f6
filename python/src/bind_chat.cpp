// kvrt._core chat templates: the prompt text of a conversation.
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "bindings.h"
#include "chat_template.h"

namespace {

using message_list = std::vector<std::pair<std::string, std::string>>;

}  // namespace

void init_chat(nb::module_& m) {
    m.def(
        "chat_template_apply",
        [](const std::string& jinja, const message_list& messages, bool add_generation_prompt,
           const std::string& bos, const std::string& eos, const std::string& name) {
            std::vector<kvrt::chat_message> msgs;
            msgs.reserve(messages.size());
            for (const auto& [role, content] : messages) msgs.push_back({role, content});
            const kvrt::chat_template t = kvrt::chat_template_select(jinja, name, bos, eos);
            return kvrt::chat_template_apply(t, msgs, add_generation_prompt);
        },
        nb::arg("template"), nb::arg("messages"), nb::arg("add_generation_prompt") = true,
        nb::arg("bos") = "", nb::arg("eos") = "", nb::arg("name") = "",
        "Prompt text of [(role, content), ...] with the family of the Jinja template (or the "
        "family `name` when given), written the way transformers renders that template.");
    m.def(
        "chat_template_family",
        [](const std::string& jinja, const std::string& name) {
            return std::string(
                kvrt::chat_template_name(kvrt::chat_template_select(jinja, name, "", "").kind));
        },
        nb::arg("template"), nb::arg("name") = "");
    m.def("chat_template_names", &kvrt::chat_template_names);
}
